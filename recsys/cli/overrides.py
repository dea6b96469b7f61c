"""Checking command-line overrides against the typed config before Hydra composes it.

Hydra rejects an unknown key, but without saying which keys exist. Users misspell keys all
the time (`trainer.lrr=0.1`), so this names the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
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
