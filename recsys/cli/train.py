"""`recsys-train [hydra overrides]`: a thin Hydra entry point around `recsys.train.recipe.run`."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from recsys.cli.overrides import check_overrides
from recsys.cli.sweep import parent_run_id
from recsys.config import ConfigError, TrainConfig, register_configs

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
log = logging.getLogger("recsys")


def main() -> None:
    _quiet_third_party()
    register_configs()
    problem = check_overrides(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    config: TrainConfig = OmegaConf.to_object(cfg)
    config.output_dir = HydraConfig.get().runtime.output_dir
    config.tracking.parent_run_id = config.tracking.parent_run_id or parent_run_id()
    from recsys.data.featurize import DataError
    from recsys.tracking import TrackingError
    from recsys.train.recipe import run  # heavy imports (torchrec) after config errors surface

    try:
        result = run(config)
    except (ConfigError, DataError, TrackingError) as e:
        # The user can act on these: say what is wrong without a traceback.
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    if int(os.environ.get("RANK", 0)) == 0:
        print(summary(result))
    return result.metrics.get("eval/auc", float("nan"))


def _quiet_third_party() -> None:
    """Keep the console for the run's own progress: torchrec and torch repeat deprecation
    notices on every rank that say nothing about the run."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec(\..*)?")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recsys\.distributed\..*")
    warnings.filterwarnings("ignore", message=r".*an autograd kernel was not registered.*")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def load_config(overrides: list[str] | None = None, output_dir: str | None = None) -> TrainConfig:
    """Compose conf/train.yaml with overrides, as the CLI would (for notebooks and tests)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides or [])
    config: TrainConfig = OmegaConf.to_object(cfg)
    if output_dir is not None:
        config.output_dir = output_dir
    return config


def summary(result) -> str:
    """The few lines a person wants at the end of a run."""
    m = result.metrics
    lines = [
        "",
        "== recsys run finished ==",
        f"  eval AUC {m.get('eval/auc', float('nan')):.4f} | log loss {m.get('eval/log_loss', float('nan')):.4f} "
        f"| NE {m.get('eval/ne', float('nan')):.4f} | calibration {m.get('eval/calibration', float('nan')):.3f}",
        f"  steps {result.steps} | {result.samples_per_second:,.0f} samples/s",
        f"  outputs  {result.output_dir}",
        f"  export   {result.export_dir or '(export disabled)'}",
        f"  tracking {result.tracking}",
    ]
    if result.run_id:
        lines.append("  open the MLflow UI with `make ui` (http://127.0.0.1:5000)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
