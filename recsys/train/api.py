"""Training from Python: `train(["trainer.epochs=1"])` is `recsys-train trainer.epochs=1`.

For notebooks, scripts and tests. The config is composed as the CLI composes it
(`recsys.compose`), the run is the CLI's recipe (`recsys.train.recipe.run`), and its outputs go
to a new `outputs/<date>/<time>/` folder, as Hydra names a `make train` run's folder. Relative
paths (the config's data files, the default MLflow store under `mlruns/`, `outputs/`) resolve
against the working directory, as they do for `make train`.

    from recsys.train.api import train

    result = train(["model=dcn", "trainer.epochs=1"])
    result.metrics["eval/auc"], result.run_id, result.export_dir
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from recsys.compose import explain, load_config
from recsys.config import ConfigError
from recsys.train.recipe import TrainResult, run

OUTPUTS = Path("outputs")


def train(
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    config_dir: str | Path | None = None,
) -> TrainResult:
    """Train, evaluate, track and export as `recsys-train OVERRIDES` would.

    Args:
        overrides: Hydra overrides, as on the command line (`data.train_path=...`,
            `model.embedding_dim=32`, `tracking=none`).
        output_dir: the run's folder (resolved config, checkpoints, predictions, export);
            default: a new `outputs/<date>/<time>/` under the working directory.
        config_dir: a folder of your own config files searched before the packaged ones,
            like `recsys-train --config-dir`.

    Returns:
        The run's `TrainResult`: final metrics, MLflow run id, export and output folders.

    Raises:
        ConfigError: an override or config value is wrong; the message names the key and the
            valid values. Errors of the run itself (`DataError`, `TrackingError`) pass through.
    """
    try:
        config = load_config(
            list(overrides),
            output_dir=str(output_dir or new_output_dir()),
            config_dir=None if config_dir is None else str(config_dir),
        )
    except (OmegaConfBaseException, HydraException) as e:
        raise ConfigError(explain(e)) from e
    return run(config)


def new_output_dir(base: Path = OUTPUTS, now: datetime | None = None) -> Path:
    """`base/<YYYY-MM-DD>/<HH-MM-SS>` as Hydra names a run folder; `-1`, `-2`, ... appended
    when a run of the same second already took it (Hydra would share the folder)."""
    stamp = now or datetime.now()
    folder = Path(base) / stamp.strftime("%Y-%m-%d") / stamp.strftime("%H-%M-%S")
    candidate, n = folder, 0
    while candidate.exists():
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    return candidate
