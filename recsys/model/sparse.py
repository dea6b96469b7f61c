"""Embedding lookups built from the schema: one TorchRec EmbeddingBagCollection -> pooled vectors.

Every model shares this sparse part; the heads (`recsys.model.head`, ...) are plain torch.
"""

from __future__ import annotations

import functools
import itertools

import torch
from torch import nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    KeyedJaggedTensor,
    KeyedTensor,
    PoolingType,
)
from torchrec.modules.embedding_modules import get_embedding_names_by_table

from recsys.config import Combine, Pooling
from recsys.model.combine import combine_pooled, feature_lookups
from recsys.model.layout import FIRST_ORDER_SUFFIX, FIRST_ORDER_WIDTH, WeightLayout
from recsys.schema import LookupPart, Schema

_POOLING = {Pooling.sum: PoolingType.SUM, Pooling.mean: PoolingType.MEAN}


def embedding_configs(schema: Schema) -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(
            name=t.name,
            embedding_dim=t.embedding_dim,
            num_embeddings=t.num_buckets,
            feature_names=list(t.features),
            pooling=_POOLING[t.pooling],
            **_product_factor_init(schema, t.name),
        )
        for t in schema.tables
    ]


def _product_factor_init(schema: Schema, table: str) -> dict[str, float]:
    """Rows near 1 for the remainder table of a qr product, TorchRec's default elsewhere.

    With both factors at the default +-sqrt(1/rows) their product starts ~100x smaller than
    a plain embedding, and so do its gradients; starting the remainder at ~1 makes the
    product start as the quotient embedding, which the remainder then refines.
    """
    factor = any(
        lk.table == table and lk.combine is Combine.product and lk.part is LookupPart.remainder
        for lk in schema.lookups
    )
    if not factor:
        return {}
    spread = (1.0 / schema.table(table).num_buckets) ** 0.5
    return {"weight_init_min": 1.0 - spread, "weight_init_max": 1.0 + spread}


def first_order_configs(schema: Schema) -> list[EmbeddingBagConfig]:
    # Zero init: every id starts with no bias of its own, as a logistic regression would.
    return [
        EmbeddingBagConfig(
            name=t.name + FIRST_ORDER_SUFFIX,
            embedding_dim=FIRST_ORDER_WIDTH,
            num_embeddings=t.num_buckets,
            feature_names=list(t.features),
            pooling=_POOLING[t.pooling],
            weight_init_min=0.0,
            weight_init_max=0.0,
        )
        for t in schema.tables
    ]


class SparseArch(nn.Module):
    """Embedding lookups: KJT -> pooled [B, sum of dims] and first-order [B, F], schema order.

    The per-id bias tables (first order) live in the same EmbeddingBagCollection as the
    embedding tables: one input split and one fused kernel per sharding group serve both,
    where a second collection doubled that per-step work (it cost ~40% of the throughput).
    A bias table reads the same KJT keys as its embedding table; TorchRec then names their
    pooled outputs "<key>@<table>".
    """

    def __init__(self, schema: Schema, first_order: bool, device: torch.device | None = None):
        super().__init__()
        self.feature_names = [f.name for f in schema.sparse_features]
        # Per feature: its lookup keys (one unless double / qr hashing) and how they combine.
        self.lookups = feature_lookups(schema)
        self.table_names = [t.name for t in schema.tables]
        self.first_order = first_order
        configs = embedding_configs(schema) + (first_order_configs(schema) if first_order else [])
        self.embedding_bags = EmbeddingBagCollection(tables=configs, device=device)
        self._vector_keys, self._bias_keys = _pooled_keys(configs)
        # All plain (one lookup per feature): the vectors and the biases are column blocks
        # of the pooled output, cut out by a few slices instead of a split per feature.
        self._plain = all(len(keys) == 1 for keys, _ in self.lookups)
        first = [keys[0] for keys, _ in self.lookups]
        self._vector_columns = tuple(self._vector_keys[k] for k in first)
        self._bias_columns = tuple(self._bias_keys[k] for k in first) if first_order else ()

    def forward(self, features: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled = self.embedding_bags(features)
        if not self._plain:
            return self._combined(pooled.to_dict())
        vectors = _columns(pooled, self._vector_columns)
        if not self.first_order:
            return vectors, None
        # [B, F * width] -> [B, F]: a bias is the sum of its table's kernel-aligned columns.
        biases = _columns(pooled, self._bias_columns)
        return vectors, biases.unflatten(1, (len(self.lookups), FIRST_ORDER_WIDTH)).sum(dim=2)

    def _combined(
        self, by_key: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Double hashing / qr: each feature's lookups joined as the schema says."""
        vectors = {k: by_key[name] for k, name in self._vector_keys.items()}
        # Concatenated, not stacked: dims may differ per table (model=dcn allows it).
        out = torch.cat([combine_pooled(vectors, k, c) for k, c in self.lookups], dim=1)
        if not self.first_order:
            return out, None
        biases = {k: by_key[name] for k, name in self._bias_keys.items()}
        per_feature = [combine_pooled(biases, k, c, first_order=True) for k, c in self.lookups]
        return out, torch.stack([b.sum(dim=1) for b in per_feature], dim=1)

    def table_parameters(self) -> list[nn.Parameter]:
        """The embedding tables' weights (what the sparse optimizer updates at sparse_lr)."""
        return [self._table(t).weight for t in self.table_names]

    def bias_parameters(self) -> list[nn.Parameter]:
        """The first-order (per-id bias) tables' weights; [] when first_order is off."""
        if not self.first_order:
            return []
        return [self._table(t + FIRST_ORDER_SUFFIX).weight for t in self.table_names]

    def _table(self, name: str) -> nn.Module:
        return self.embedding_bags.embedding_bags[name]

    def weight_layout(self) -> WeightLayout:
        """State keys of every table and bias table (TorchRec's EmbeddingBagCollection names
        a table's weight `embedding_bags.<table>.weight`)."""
        key = "embedding_bags.embedding_bags.{}.weight".format
        tables = {t: key(t) for t in self.table_names}
        first_order = {}
        if self.first_order:
            first_order = {t: key(t + FIRST_ORDER_SUFFIX) for t in self.table_names}
        return WeightLayout(tables, first_order, dense_prefix="")


def _is_bias(config: EmbeddingBagConfig) -> bool:
    return config.name.endswith(FIRST_ORDER_SUFFIX)


def _pooled_keys(configs: list[EmbeddingBagConfig]) -> tuple[dict[str, str], dict[str, str]]:
    """Lookup key -> key of its pooled output, for the embedding tables and the bias tables.

    A KJT key read by two tables is named "<key>@<table>" in the output (TorchRec's rule).
    """
    vectors, biases = {}, {}
    for config, names in zip(configs, get_embedding_names_by_table(configs), strict=True):
        target = biases if _is_bias(config) else vectors
        target.update(zip(config.feature_names, names, strict=True))
    return vectors, biases


@torch.fx.wrap  # a leaf for TorchRec's pipeline tracer: its keys are known only at run time
def _columns(pooled: KeyedTensor, keys: tuple[str, ...]) -> torch.Tensor:
    """The columns of `keys`, in that order, out of the pooled output: one slice or one gather.

    Sharded, the output's keys come grouped by sharding type, not in table order. One gather
    then, not a slice per run of adjacent keys: each slice's backward would zero and add a
    gradient the size of the whole output.
    """
    values = pooled.values()
    found = _column_index(tuple(pooled.keys()), tuple(pooled.length_per_key()), keys, values.device)
    if isinstance(found, slice):
        return values[:, found]
    return values.index_select(1, found)


@functools.cache
def _column_index(
    keys: tuple[str, ...], widths: tuple[int, ...], wanted: tuple[str, ...], device: torch.device
) -> slice | torch.Tensor:
    """Where the `wanted` keys' columns are: a slice if they are adjacent and in order."""
    starts = dict(zip(keys, itertools.accumulate((0, *widths[:-1])), strict=True))
    spans = dict(zip(keys, widths, strict=True))
    columns = [c for key in wanted for c in range(starts[key], starts[key] + spans[key])]
    if columns == list(range(columns[0], columns[0] + len(columns))):
        return slice(columns[0], columns[0] + len(columns))
    return torch.tensor(columns, dtype=torch.long, device=device)
