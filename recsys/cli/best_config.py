"""A sweep's best trial as a config file that `make train` reuses.

`<sweep dir>/experiment/best.yaml` is an experiment file (`@package _global_`) built from what
Hydra saved in the trial's folder (`.hydra/`): the trial's config group choices as `override
/<group>: <option>` defaults and its overrides as values, plus every `data`, `model`,
`trainer` or `sharding` value the config files give differently today than when the trial
ran (or all of them, when today's files no longer compose): it trains the same model even
after a default changed. What made the sweep (`+tune=...`: no export, no registered model,
no epoch-end checkpoints per trial) is left out, so training it again is a normal run.
Train it with

    make train ARGS='--config-dir <sweep dir> +experiment=best'

(more overrides after it win; a trial's deletions, `~key`, which an experiment file cannot
express, follow it on the command it prints), or copy it to conf/experiment/<name>.yaml and
`make train ARGS='+experiment=<name>'`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: Config groups of the sweep itself, never part of the trained config.
SWEEP_GROUPS = {"tune"}
#: Sections whose values are kept as the trial ran them (what decides the model).
PINNED = ("data", "model", "trainer", "sharding")
#: Keys under PINNED that the sweep's own config sets: these keep today's defaults.
NOT_PINNED = ("trainer.checkpoint",)
EXPERIMENT = "best"


@dataclass(frozen=True)
class BestConfig:
    """Where the best trial's config was written, and the command that trains it."""

    path: Path
    overrides: list[str]  # the trial's own overrides (what was searched, and fixed by the user)

    def command(self) -> str:
        """`make train` with best.yaml, and the trial's deletions (`~key`): an experiment file
        merges into the config and cannot remove a key, so they follow it on the command."""
        config_dir = self.path.parent.parent
        # Hydra hands a trial a deletion as `~key=null`; `~key` deletes whatever the value.
        deletions = "".join(f" {o.removesuffix('=null')}" for o in self.overrides if o[0] == "~")
        return (
            f"make train ARGS='--config-dir {config_dir} +experiment={self.path.stem}{deletions}'"
        )


def write_best_config(trial_dir: Path, sweep_dir: Path, header: str) -> BestConfig:
    """Write `<sweep_dir>/experiment/best.yaml` for the trial that ran in `trial_dir`."""
    saved = trial_dir / ".hydra"
    overrides = [str(o) for o in OmegaConf.load(saved / "overrides.yaml")]
    runtime = OmegaConf.load(saved / "hydra.yaml").hydra.runtime
    kept = [o for o in overrides if _key(o) not in SWEEP_GROUPS]
    choices = {g: c for g, c in runtime.choices.items() if _is_task_group(str(g)) and c}
    ran = OmegaConf.load(saved / "config.yaml")
    today = _compose_today(choices, kept, runtime.config_sources)
    best = BestConfig(sweep_dir / "experiment" / f"{EXPERIMENT}.yaml", kept)
    lines = [
        *header.splitlines(),
        f"Its overrides: {' '.join(kept)}",
        f"Train it: {best.command()}",
    ]
    if today is None:
        lines.append("Today's config files do not compose these choices: all values pinned.")
    comment = "".join(f"# {line}".rstrip() + "\n" for line in lines)
    body = OmegaConf.to_yaml(experiment(kept, choices, ran, today))
    best.path.parent.mkdir(parents=True, exist_ok=True)
    best.path.write_text(f"# @package _global_\n{comment}{body}")
    return best


def experiment(
    overrides: list[str], choices: dict[str, str], ran: DictConfig, today: dict[str, Any] | None
) -> DictConfig:
    """The experiment config of a trial: its group `choices`, its `overrides` (a deletion
    `~key` is not carried), and the `PINNED` values it `ran` with that `today`'s composition
    of the same choices and overrides gives differently (None: pin them all)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = OmegaConf.create()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key not in choices and not override.is_delete():
            OmegaConf.update(values, key, override.value(), force_add=True)
    now = _leaves(today or {})
    for key, value in _leaves(OmegaConf.to_container(ran)).items():
        if _pinned(key) and (key not in now or now[key] != value):
            OmegaConf.update(values, key, value, force_add=True)
    defaults: list[Any] = [{f"override /{g}": c} for g, c in choices.items()]
    return OmegaConf.merge({"defaults": [*defaults, "_self_"]}, values)


def _compose_today(
    choices: dict[str, str], overrides: list[str], sources: Any
) -> dict[str, Any] | None:
    """The config these choices and overrides give with today's config files (and the
    sweep's --config-dir), as plain values; None when they no longer compose."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from recsys.compose import load_config

    user_dirs = [s.path for s in sources if s.provider == "command-line" and s.schema == "file"]
    groups = [f"{g}={c}" for g, c in choices.items()]
    rest = [o for o in overrides if _key(o) not in choices]
    backup = get_gh_backup()  # called inside the sweep's own Hydra app: set it aside
    GlobalHydra.instance().clear()
    try:
        config = load_config(groups + rest, config_dir=user_dirs[0] if user_dirs else None)
    except Exception as err:  # a file or key the trial used is gone: pin everything instead
        log.warning("best.yaml: today's config files do not compose the trial's (%s)", err)
        return None
    finally:
        restore_gh_from_backup(backup)
    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)


def _leaves(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf (a list, or an empty dict, is one leaf)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        out |= _leaves(value, f"{name}.") if isinstance(value, dict) and value else {name: value}
    return out


def _is_task_group(group: str) -> bool:
    return "/" not in group and not group.startswith("hydra") and group not in SWEEP_GROUPS


def _pinned(key: str) -> bool:
    """A value best.yaml carries as the trial ran it (when today's defaults differ)."""
    under = key.split(".")[0] in PINNED
    return under and not any(key == k or key.startswith(f"{k}.") for k in NOT_PINNED)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")
