"""Embedding lookups built from the schema: TorchRec EmbeddingBagCollections -> pooled vectors.

Every model shares this sparse part; the heads (`recsys.model.head`, ...) are plain torch.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

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
    """Embedding lookups: KJT -> pooled [B, sum of dims] and first-order [B, F], schema order."""

    def __init__(self, schema: Schema, first_order: bool, device: torch.device | None = None):
        super().__init__()
        self.feature_names = [f.name for f in schema.sparse_features]
        # Per feature: its lookup keys (one unless double / qr hashing) and how they combine.
        self.lookups = feature_lookups(schema)
        self.table_names = [t.name for t in schema.tables]
        self.embedding_bags = EmbeddingBagCollection(
            tables=embedding_configs(schema), device=device
        )
        self.first_order_bags = (
            EmbeddingBagCollection(tables=first_order_configs(schema), device=device)
            if first_order
            else None
        )

    def forward(self, features: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled = self.embedding_bags(features).to_dict()
        # Concatenated, not stacked: dims may differ per table (model=dcn allows it).
        vectors = torch.cat([combine_pooled(pooled, k, c) for k, c in self.lookups], dim=1)
        if self.first_order_bags is None:
            return vectors, None
        biases = self.first_order_bags(features).to_dict()
        per_feature = [combine_pooled(biases, k, c, first_order=True) for k, c in self.lookups]
        return vectors, torch.stack([b.sum(dim=1) for b in per_feature], dim=1)

    def weight_layout(self) -> WeightLayout:
        """State keys of every table and bias table (TorchRec's EmbeddingBagCollection names
        a table's weight `embedding_bags.<table>.weight`)."""
        tables = {t: f"embedding_bags.embedding_bags.{t}.weight" for t in self.table_names}
        first_order = {}
        if self.first_order_bags is not None:
            first_order = {
                t: f"first_order_bags.embedding_bags.{t}{FIRST_ORDER_SUFFIX}.weight"
                for t in self.table_names
            }
        return WeightLayout(tables, first_order, dense_prefix="")
