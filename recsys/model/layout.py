"""Which state-dict entries of a click model are which table, bias table or dense part.

The model owns its weight layout: export, warm start, checkpoints and the recipe ask a
`WeightLayout` (from `ClickModel.weight_layout()`) instead of spelling key strings, so renaming
a module changes this file's callers nowhere. No torchrec here: the serving side imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# Width of each first-order (per-id bias) table. One column would do, but FBGEMM's sharded
# kernels need a multiple of 4 columns, so the bias is the sum of 4 learned columns.
FIRST_ORDER_WIDTH = 4
# A bias folded into its embedding row is the mean of its columns (recsys.model.sparse says
# why); a bias table's is their sum.
BIAS_IN_ROW_SCALE = 1.0 / FIRST_ORDER_WIDTH
# A bias table's name is its embedding table's name with this suffix (TorchRec table names).
FIRST_ORDER_SUFFIX = "__first_order"
# The dense part's first-order term (a weight per dense feature, and the bias: the global bias
# where the head has no other), named alike in every head: a warm start copies it from another
# head (the first-order stage's LR into the whole model) when the rest of the dense part differs.
DENSE_FIRST_ORDER_PREFIX = "dense_linear."
# An empty slot of a managed table's remap holds this id (TorchRec MCH's int64 max marker).
REMAP_EMPTY_SLOT = 2**63 - 1


@dataclass(frozen=True)
class ModelWeights:
    """A model's weights by role: what an export writes and a warm start reads."""

    tables: dict[str, Any]  # physical table -> [num_buckets, dim]
    first_order: dict[str, Any]  # physical table -> its bias table [num_buckets, width]
    dense: dict[str, Any]  # the head's state dict (keys relative to the head)
    # managed table -> (ids holding a row, their rows): the remap's state entries, [rows] each
    remaps: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # table -> what its bias columns' sum is multiplied by to make the bias (absent: 1)
    bias_scale: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RemapKeys:
    """State keys of a managed table's remap: the ids holding a row (sorted per row shard,
    empty slots hold int64 max) and the row each one reads."""

    ids: str
    rows: str

    def under(self, prefix: str) -> RemapKeys:
        return RemapKeys(prefix + self.ids, prefix + self.rows)


@dataclass(frozen=True)
class WeightLayout:
    """State-dict keys of one model, as seen from the module that holds it at `prefix`."""

    tables: dict[str, str]  # physical table -> key of its weight
    first_order: dict[str, str] = field(default_factory=dict)  # table -> key of its bias table
    dense_prefix: str = "head."  # every key under it belongs to the dense part (the head)
    remaps: dict[str, RemapKeys] = field(default_factory=dict)  # managed table -> its remap
    # Table -> its embedding width, where the bias is folded into the table's rows: columns
    # [0, width) are the embedding, the FIRST_ORDER_WIDTH after it the bias (same state key).
    folded: dict[str, int] = field(default_factory=dict)

    def columns(self, table: str, bias: bool = False) -> slice:
        """The columns of a table's (or its bias's) state entry that are the embedding (bias)."""
        width = self.folded.get(table)
        if width is None:
            return slice(None)
        return slice(width, width + FIRST_ORDER_WIDTH) if bias else slice(0, width)

    def under(self, prefix: str) -> WeightLayout:
        """The same layout seen from a wrapper that keeps the model at `prefix` ("model.")."""
        return WeightLayout(
            {t: prefix + k for t, k in self.tables.items()},
            {t: prefix + k for t, k in self.first_order.items()},
            prefix + self.dense_prefix,
            {t: keys.under(prefix) for t, keys in self.remaps.items()},
            dict(self.folded),
        )

    def embedding_keys(self) -> dict[str, str]:
        """Every embedding table the model holds, bias tables under `<table>__first_order`
        (a folded bias: its table's key; `columns` tells them apart)."""
        biases = {t + FIRST_ORDER_SUFFIX: k for t, k in self.first_order.items()}
        return {**self.tables, **biases}

    def dense_keys(self, state: Mapping[str, Any]) -> dict[str, str]:
        """State key -> its key inside the dense part ('model.head.over.0.weight' -> 'over.0.weight')."""
        n = len(self.dense_prefix)
        return {k: k[n:] for k in state if k.startswith(self.dense_prefix)}

    def split(self, state: Mapping[str, T]) -> ModelWeights:
        """A full state dict by role (tables, bias tables, dense part); a folded table's
        entry is both its table and its bias: cut them with `columns`."""
        return ModelWeights(
            tables={t: state[k] for t, k in self.tables.items()},
            first_order={t: state[k] for t, k in self.first_order.items()},
            dense={inner: state[k] for k, inner in self.dense_keys(state).items()},
            remaps={t: (state[k.ids], state[k.rows]) for t, k in self.remaps.items()},
            bias_scale={t: BIAS_IN_ROW_SCALE for t in self.folded},
        )
