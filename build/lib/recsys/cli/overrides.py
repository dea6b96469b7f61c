"""Reading `recsys-train` arguments before Hydra acts on them.

Hydra rejects an unknown key, but without saying which keys exist. Users misspell keys all
the time (`trainer.lrr=0.1`), so `check_overrides` names the valid ones. `single_run_args`
picks out what the CLI composes and validates before Hydra makes a run folder.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from recsys.config import TrainConfig


def check_overrides(args: list[str]) -> str | None:
    """An error message for the first override whose key does not exist, else None."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra") or "@" in key or arg.startswith("+"):
            continue  # Hydra's own settings, package moves and deliberate additions
        problem = _unknown(key)
        if problem:
            return problem
    return None


def _unknown(key: str) -> str | None:
    node: Any = TrainConfig
    walked: list[str] = []
    for part in key.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None  # inside a dict (e.g. data.features.<name>): keys are the user's own
        hints = typing.get_type_hints(node)
        if part not in hints:
            where = ".".join(walked) or "the top level"
            valid = ", ".join(sorted(hints))
            return (
                f"Unknown config key '{key}': '{part}' is not a key of {where}. "
                f"Valid keys there: {valid}."
            )
        node = _dataclass_in(hints[part])
        walked.append(part)
    return None


def _dataclass_in(hint: Any) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None -> X
        for arg in typing.get_args(hint):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                return arg
    return hint  # a dict or a scalar: no typed keys below


@dataclass(frozen=True)
class SingleRun:
    """The parts of a command line that decide the config of a single run."""

    overrides: list[str]
    config_dir: str | None  # --config-dir / -cd
    name: str  # --config-name / -cn


def single_run_args(argv: list[str]) -> SingleRun | None:
    """What a single run composes, read with Hydra's own argument parser; None when the
    command starts no single run (--multirun, --help, --cfg, --info, ...) or moves the primary
    config folder (--config-path), so Hydra alone decides."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    no_single_run = (
        args.multirun,
        args.help,
        args.hydra_help,
        args.cfg,
        args.info,
        args.shell_completion,
        args.experimental_rerun,
        args.config_path,
    )
    if any(no_single_run) or any(_is_multirun_mode(o) for o in args.overrides):
        return None
    return SingleRun(list(args.overrides), args.config_dir, args.config_name or "train")


def _is_multirun_mode(override: str) -> bool:
    key, _, value = override.partition("=")
    return key.lstrip("+~") == "hydra.mode" and value.strip().upper() == "MULTIRUN"
