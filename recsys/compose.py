"""Composing the typed `TrainConfig` from conf/ and overrides, as `recsys-train` does.

The CLI, notebooks, tests and benchmarks all load configs through here, so they compose the
same YAML the same way. Composition already rejects an unknown key, a value of the wrong type
or a choice that is not one of its enum's members; `explain` turns those errors into one line
that names the key and the valid values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recsys.config import ConfigError, TrainConfig, register_configs

CONFIG_NAME = "train"


def conf_dir() -> str:
    """The folder holding train.yaml and its groups (data/, model/, trainer/, ...)."""
    return str(Path(__file__).resolve().parent / "conf")


def load_config(
    overrides: list[str] | None = None,
    output_dir: str | None = None,
    config_dir: str | None = None,
    config_name: str = CONFIG_NAME,
) -> TrainConfig:
    """Compose `<config_name>.yaml` with Hydra overrides into a `TrainConfig`.

    Args:
        overrides: Hydra overrides, as on the command line (`trainer.lr=0.1`, `model=dcn`).
        output_dir: sets `TrainConfig.output_dir` (the CLI uses Hydra's run folder).
        config_dir: a user's config folder searched before conf/ (like `--config-dir`), so its
            group files (e.g. `data/mine.yaml`) add to or replace the packaged ones.
        config_name: the primary config file, without `.yaml` (like `--config-name`).

    Raises:
        hydra.errors.HydraException, omegaconf.errors.OmegaConfBaseException: the overrides or
            YAML do not compose (unknown key or group option, wrong type, invalid choice).
    """
    from hydra import compose

    register_configs()
    with _initialized(config_dir):
        cfg = compose(config_name=config_name, overrides=overrides or [])
    config = to_train_config(cfg)
    if output_dir is not None:
        config.output_dir = output_dir
    return config


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """The composed config as a `TrainConfig`. A top-level key it has no field for is an error
    (OmegaConf would drop it): mostly `+experiment=NAME` with no `experiment/NAME.yaml` on the
    search path, which Hydra then adds as a plain value, so the run trained the defaults."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = [str(key) for key in cfg if key not in known]
    if "experiment" in unknown:
        raise ConfigError(
            f"+experiment={cfg.experiment}: no experiment/{cfg.experiment}.yaml in conf/ or "
            "--config-dir. make tune and make sweep write experiment/best.yaml into their sweep "
            "folder when they finish: pass that folder as --config-dir."
        )
    if unknown:
        raise ConfigError(f"unknown top-level keys {unknown}; the config has {sorted(known)}.")
    return OmegaConf.to_object(cfg)


@contextmanager
def _initialized(config_dir: str | None) -> Iterator[None]:
    """`hydra.initialize_config_dir(conf_dir())`, plus `config_dir` where `--config-dir` puts it.

    Hydra's CLI adds `--config-dir` after the primary folder (just before the structured
    schemas): a same-named file in conf/ still wins, new group options and primary configs are
    found. Composing with the same search path keeps this check and the real run in agreement.
    """
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    search_path = create_config_search_path(search_path_dir=conf_dir())
    if config_dir is not None:
        path = Path(config_dir).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"--config-dir {config_dir}: no such folder ({path}).")
        search_path.prepend(
            provider="command-line",
            path=f"file://{path}",
            anchor=SearchPathQuery(provider="schema"),
        )
    backup = get_gh_backup()
    version.setbase("1.3")
    try:
        Hydra.create_main_hydra2(task_name="app", config_search_path=search_path)
        yield
    finally:
        restore_gh_from_backup(backup)


def explain(error: BaseException) -> str:
    """One line (or a few) a user can act on, for a composition or config error.

    OmegaConf's errors carry the full key (`trainer.lr_schedule.decay`) and, for an enum, the
    valid values; Hydra wraps them in a less specific message, so the innermost one wins.
    """
    for cause in _chain(error):
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            message = str(getattr(cause, "msg", "") or cause).split("\n")[0]
            return f"{cause.full_key}: {message}{_new_entry_hint(message)}"
    message = str(error).split("\nConfig search path:")[0]  # Hydra's list of its own folders
    message = message.replace(":\n\t", ": ").replace("\n\t", ", ").replace("\n\n", ". ")
    return message.strip()


# OmegaConf cannot create a typed dict entry from an override's value (omry/omegaconf#360):
# `+data.features.NAME={...}` fails with this message, naming only NAME.
_NEW_ENTRY = {"FeatureSpec": "data.features", "TableSpec": "data.tables"}


def _new_entry_hint(message: str) -> str:
    for spec, where in _NEW_ENTRY.items():
        if f"is not a subclass of {spec}" in message:
            return (
                f". A new entry of {where} cannot be added by an override: add it to a data "
                f"config (a copy of conf/data/<name>.yaml in your --config-dir, or one written "
                f"by `recsys-data infer-schema`); existing entries take overrides such as "
                f"{where}.<name>.<key>=VALUE"
            )
    return ""


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain[::-1]  # innermost first
