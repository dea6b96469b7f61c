"""Run config -> MLflow params: flattened dotted keys, within MLflow's limits."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

#: MLflow's limit on a param value's length (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_VALUE_LENGTH = 6000

_TRUNCATION_MARKER = "...[truncated]"
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a dataclass / nested mapping / sequence into MLflow params with dotted keys.

    `{"trainer": {"lr": 0.1}}` gives `{"trainer.lr": "0.1"}`; a dataclass is read field by
    field; Enums give their value; lists of scalars become one JSON value (`"[64, 32]"`); other
    lists are indexed (`"items.0.name"`). Values longer than MLflow's limit are truncated with
    a `...[truncated]` marker; characters MLflow rejects in keys become `_`.

    Args:
        obj: the value to flatten.
        prefix: key prefix for everything under `obj`.

    Returns:
        Param key -> string value, in the order the fields appear.
    """
    out: dict[str, str] = {}
    _flatten_into(out, obj, prefix)
    return out


def _flatten_into(out: dict[str, str], obj: Any, prefix: str) -> None:
    """Add the params of `obj` (under `prefix`) to `out`."""
    children = _children(obj)
    if children is None:
        out[_param_key(prefix or "value")] = _param_value(_scalar_text(obj))
    elif not children and prefix:
        out[_param_key(prefix)] = "[]" if _is_sequence(obj) else "{}"
    else:
        for key, value in children:
            _flatten_into(out, value, f"{prefix}.{key}" if prefix else str(key))


def _children(obj: Any) -> list[tuple[str, Any]] | None:
    """Named sub-values of a container; None for a leaf (scalar, or list of scalars)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    if _is_sequence(obj):
        items = list(obj)
        if items and all(_is_scalar(v) for v in items):
            return None
        return [(str(i), v) for i, v in enumerate(items)]
    return None


def _is_sequence(obj: Any) -> bool:
    return isinstance(obj, Sequence | set | frozenset) and not isinstance(obj, str | bytes)


def _is_scalar(obj: Any) -> bool:
    return obj is None or isinstance(obj, str | int | float | bool | Enum | Path)


def _scalar_text(obj: Any) -> str:
    """A leaf's text: Enums by value, sequences of scalars as JSON, the rest by `str`."""
    if isinstance(obj, Enum):
        return str(obj.value)
    if _is_sequence(obj):
        return json.dumps(list(obj), default=json_default)
    return str(obj)


def _param_value(text: str) -> str:
    """`text`, cut to MLflow's param value limit with a marker when too long."""
    if len(text) <= MAX_PARAM_VALUE_LENGTH:
        return text
    return text[: MAX_PARAM_VALUE_LENGTH - len(_TRUNCATION_MARKER)] + _TRUNCATION_MARKER


def _param_key(key: str) -> str:
    """`key` with characters MLflow rejects replaced by `_`."""
    return _BAD_KEY_CHARS.sub("_", key)


def json_default(obj: Any) -> Any:
    """JSON fallback for Enums, Paths, sets and dataclasses."""
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return str(obj)
