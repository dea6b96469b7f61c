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
from recsys.model.layout import (
    BIAS_IN_ROW_SCALE,
    FIRST_ORDER_SUFFIX,
    FIRST_ORDER_WIDTH,
    RemapKeys,
    WeightLayout,
)
from recsys.model.managed import REMAP_IDS, REMAP_ROWS, managed_collection
from recsys.schema import LookupPart, ResolvedTable, Schema

_POOLING = {Pooling.sum: PoolingType.SUM, Pooling.mean: PoolingType.MEAN}


def embedding_configs(
    schema: Schema, tables: tuple[ResolvedTable, ...] | None = None, bias_columns: int = 0
) -> list[EmbeddingBagConfig]:
    """TorchRec configs of `tables` (all the schema's physical tables by default), each row
    `bias_columns` wider than its embedding: the per-id bias, folded into the row."""
    return [
        EmbeddingBagConfig(
            name=t.name,
            embedding_dim=t.embedding_dim + bias_columns,
            num_embeddings=t.num_buckets,
            feature_names=list(t.features),
            pooling=_POOLING[t.pooling],
            **_product_factor_init(schema, t.name),
        )
        for t in (schema.tables if tables is None else tables)
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


def first_order_configs(
    schema: Schema, tables: tuple[ResolvedTable, ...] | None = None
) -> list[EmbeddingBagConfig]:
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
        for t in (schema.tables if tables is None else tables)
    ]


class SparseArch(nn.Module):
    """Embedding lookups: KJT -> pooled [B, sum of dims] and first-order [B, F], schema order.

    The per-id biases (first order) are bias tables in the same EmbeddingBagCollection as
    the embedding tables: one input split and one fused kernel per sharding group serve both.
    A bias table reads the same KJT keys as its embedding table; TorchRec then names their
    pooled outputs "<key>@<table>". Each id is still looked up twice, and the fused kernels'
    time goes by rows looked up.

    `bias_in_rows` folds them into the embedding rows instead: a hashed table's row is its
    embedding followed by FIRST_ORDER_WIDTH bias columns (zero at the start), one lookup per
    id: on `make bench`'s Criteo shape, pre-made batches, 96.6k -> 103.6k samples/s at batch
    512 and 149.1k -> 165.4k at 4096 (medians of 5 alternating rounds). Such a bias is its
    columns' mean, not their sum: the row has one Adagrad state, and summed, the bias's
    gradients dominated it (MovieLens eval AUC 0.6982 -> 0.6914, 3 seeds; mean: 0.6972). The
    bias then learns more slowly than in a table of its own, which the synthetic pairwise
    world needs (share of the best AUC 0.822 -> 0.691 +- 0.045, 3 seeds): so, opt-in.

    Managed tables (`hashing: managed`) sit apart, behind their remap, in a TorchRec
    ManagedCollisionEmbeddingBagCollection (`managed`); their bias tables (`managed_bias`)
    read the remapped ids it returns, so a bias row is always its embedding row's id's.
    """

    def __init__(
        self,
        schema: Schema,
        first_order: bool,
        device: torch.device | None = None,
        bias_in_rows: bool = False,
    ):
        super().__init__()
        self.feature_names = [f.name for f in schema.sparse_features]
        # Per feature: its lookup keys (one unless double / qr hashing) and how they combine.
        self.lookups = feature_lookups(schema)
        self.table_names = [t.name for t in schema.tables]
        self.first_order = first_order
        hashed = tuple(t for t in schema.tables if t.managed is None)
        # Hashed table -> its embedding width, where its rows end in folded bias columns.
        self.folded = {t.name: t.embedding_dim for t in hashed if first_order and bias_in_rows}
        configs = embedding_configs(schema, hashed, FIRST_ORDER_WIDTH if self.folded else 0)
        configs += first_order_configs(schema, hashed) if first_order and not bias_in_rows else []
        self.embedding_bags = EmbeddingBagCollection(configs, device=device) if hashed else None
        if self.folded and device != torch.device("meta"):  # on meta: after sharding (build)
            with torch.no_grad():
                for name, width in self.folded.items():
                    self.embedding_bags.embedding_bags[name].weight[:, width:].zero_()
        self._vector_keys, self._bias_keys = _pooled_keys(configs)
        if self.folded:
            self._bias_keys = dict(self._vector_keys)
        # Lookup key -> the embedding width of the table it reads (where its bias columns start).
        self._key_width = {
            k: t.embedding_dim for t in hashed for k in t.features if t.name in self.folded
        }
        self.managed, self.managed_bias = _managed_parts(schema, first_order, device)
        self.managed_tables = [t.name for t in schema.managed_tables]
        self._managed_keys = [k for t in schema.managed_tables for k in t.features]
        # All plain (one lookup per feature, none managed): the vectors and the biases are
        # column blocks of the pooled output, cut out by a few slices, not a split per feature.
        self._plain = all(len(keys) == 1 for keys, _ in self.lookups) and self.managed is None
        first = [keys[0] for keys, _ in self.lookups] if self._plain else []
        self._vector_columns = tuple(self._span(k, bias=False) for k in first)
        self._bias_columns = tuple(self._span(k, bias=True) for k in first) if first_order else ()

    def _span(self, key: str, bias: bool) -> Span:
        """(pooled output key, first column, end column or None for all) of a lookup key's
        vector or bias inside its table's pooled output."""
        name = (self._bias_keys if bias else self._vector_keys)[key]
        width = self._key_width.get(key)
        if width is None:  # a table of its own: all its columns
            return name, 0, None
        return (name, width, width + FIRST_ORDER_WIDTH) if bias else (name, 0, width)

    def forward(self, features: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self._plain:
            return self._combined(self._pooled_by_key(features))
        pooled = self.embedding_bags(features)
        if not self.first_order:
            return _columns(pooled, self._vector_columns), None
        vectors, biases = _vectors_and_biases(pooled, self._vector_columns, self._bias_columns)
        # [B, F * width] -> [B, F]: a bias is its kernel-aligned columns' sum (a bias table)
        # or mean (folded into the embedding row: see `bias_scale`).
        biases = biases.unflatten(1, (len(self.lookups), FIRST_ORDER_WIDTH))
        return vectors, biases.mean(dim=2) if self.folded else biases.sum(dim=2)

    def _pooled_by_key(
        self, features: KeyedJaggedTensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Lookup key -> pooled embedding, and -> pooled bias (first order), of every lookup."""
        vectors: dict[str, torch.Tensor] = {}
        biases: dict[str, torch.Tensor] = {}
        if self.embedding_bags is not None:
            by_name = self.embedding_bags(features).to_dict()
            for key in self._vector_keys:
                vectors[key] = _cut(by_name, self._span(key, bias=False))
                if self.first_order:
                    scale = BIAS_IN_ROW_SCALE if key in self._key_width else 1.0
                    biases[key] = _cut(by_name, self._span(key, bias=True)) * scale
        if self.managed is not None:
            # Indexed, not unpacked: TorchRec's pipeline tracer sees a proxy here.
            out = self.managed(features)
            by_name = out[0].to_dict()  # a key read by one table keeps its name
            vectors |= {k: by_name[k] for k in self._managed_keys}
            if self.managed_bias is not None:
                by_name = self.managed_bias(out[1]).to_dict()
                biases |= {k: by_name[k] for k in self._managed_keys}
        return vectors, biases

    def _combined(
        self, pooled: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Double hashing / qr / managed: each feature's lookups joined as the schema says."""
        vectors, biases = pooled
        # Concatenated, not stacked: dims may differ per table (model=dcn allows it).
        out = torch.cat([combine_pooled(vectors, k, c) for k, c in self.lookups], dim=1)
        if not self.first_order:
            return out, None
        per_feature = [combine_pooled(biases, k, c, first_order=True) for k, c in self.lookups]
        return out, torch.stack([b.sum(dim=1) for b in per_feature], dim=1)

    def table_parameters(self) -> list[nn.Parameter]:
        """The embedding tables' weights (what the sparse optimizer updates at sparse_lr)."""
        return [self._table(t).weight for t in self.table_names]

    def bias_parameters(self) -> list[nn.Parameter]:
        """The first-order (per-id bias) tables' weights; [] when first_order is off or the
        biases are folded into the embedding rows (`table_parameters` holds them)."""
        if not self.first_order:
            return []
        names = [t for t in self.table_names if t not in self.folded]
        return [self._table(t + FIRST_ORDER_SUFFIX).weight for t in names]

    def _table(self, name: str) -> nn.Module:
        return self.get_submodule(self._table_key(name).removesuffix(".weight"))

    def _table_key(self, name: str) -> str:
        """State key of a table's (or bias table's) weight, by the collection holding it."""
        table = name.removesuffix(FIRST_ORDER_SUFFIX)
        if table not in self.managed_tables:
            return f"embedding_bags.embedding_bags.{name}.weight"
        if name != table:
            return f"managed_bias.embedding_bags.{name}.weight"
        return f"managed._embedding_module.embedding_bags.{name}.weight"

    def weight_layout(self) -> WeightLayout:
        """State keys of every table, bias table and remap (TorchRec's EmbeddingBagCollection
        names a table's weight `embedding_bags.<table>.weight`)."""
        tables = {t: self._table_key(t) for t in self.table_names}
        first_order = {}
        if self.first_order:
            first_order = {
                t: self._table_key(t if t in self.folded else t + FIRST_ORDER_SUFFIX)
                for t in self.table_names
            }
        remap = "managed._managed_collision_collection._managed_collision_modules.{}.{}".format
        remaps = {
            t: RemapKeys(remap(t, REMAP_IDS), remap(t, REMAP_ROWS)) for t in self.managed_tables
        }
        return WeightLayout(tables, first_order, "", remaps, dict(self.folded))


def _managed_parts(
    schema: Schema, first_order: bool, device: torch.device | None
) -> tuple[nn.Module | None, nn.Module | None]:
    """The managed tables behind their remaps, and their bias tables (None: none managed)."""
    managed = schema.managed_tables
    if not managed:
        return None, None
    options = {t.name: t.managed for t in managed}
    tables = managed_collection(embedding_configs(schema, managed), options, device, first_order)
    if not first_order:
        return tables, None
    return tables, EmbeddingBagCollection(first_order_configs(schema, managed), device=device)


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


Span = tuple[str, int, int | None]  # (pooled output key, first column, end column or None)


def _cut(by_name: dict[str, torch.Tensor], span: Span) -> torch.Tensor:
    name, start, stop = span
    return by_name[name] if (start, stop) == (0, None) else by_name[name][:, start:stop]


@torch.fx.wrap  # a leaf for TorchRec's pipeline tracer: its keys are known only at run time
def _columns(pooled: KeyedTensor, spans: tuple[Span, ...]) -> torch.Tensor:
    """The columns of `spans`, in that order, out of the pooled output: one slice or one gather.

    Sharded, the output's keys come grouped by sharding type, not in table order. One gather
    then, not a slice per run of adjacent keys: each slice's backward would zero and add a
    gradient the size of the whole output.
    """
    values = pooled.values()
    found = _column_index(
        tuple(pooled.keys()), tuple(pooled.length_per_key()), spans, values.device
    )
    if isinstance(found, slice):
        return values[:, found]
    return values.index_select(1, found)


@torch.fx.wrap
def _vectors_and_biases(
    pooled: KeyedTensor, vector_spans: tuple[Span, ...], bias_spans: tuple[Span, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_columns` of both, by one split where the vectors then the biases fill the output
    (one bias table per embedding table, on one process): a slice's backward zero-fills a
    gradient the size of the whole output, two per step ([4096, 520]: 0.6 ms of ~29), a
    split's concatenates the two."""
    values = pooled.values()
    keys, widths = tuple(pooled.keys()), tuple(pooled.length_per_key())
    vectors = _column_index(keys, widths, vector_spans, values.device)
    biases = _column_index(keys, widths, bias_spans, values.device)
    if (
        isinstance(vectors, slice)
        and isinstance(biases, slice)
        and (vectors.start, vectors.stop, biases.stop) == (0, biases.start, values.shape[1])
    ):
        return values.split([vectors.stop, biases.stop - biases.start], dim=1)
    return _columns(pooled, vector_spans), _columns(pooled, bias_spans)


@functools.cache
def _column_index(
    keys: tuple[str, ...], widths: tuple[int, ...], wanted: tuple[Span, ...], device: torch.device
) -> slice | torch.Tensor:
    """Where the `wanted` spans' columns are: a slice if they are adjacent and in order."""
    starts = dict(zip(keys, itertools.accumulate((0, *widths[:-1])), strict=True))
    spans = dict(zip(keys, widths, strict=True))
    columns = [
        c
        for key, first, end in wanted
        for c in range(starts[key] + first, starts[key] + (spans[key] if end is None else end))
    ]
    if columns == list(range(columns[0], columns[0] + len(columns))):
        return slice(columns[0], columns[0] + len(columns))
    return torch.tensor(columns, dtype=torch.long, device=device)
