"""The click model: TorchRec embedding bags built from the schema, then `DLRMHead`.

The model maps (dense, KeyedJaggedTensor) to logits and knows nothing of loss, optimizer,
device or process group; `recsys.train` wraps it.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from recsys.config import ConfigError, ModelConfig, Pooling, Schema
from recsys.model.head import DLRMHead, HeadConfig

# Width of each first-order (per-id bias) table. One column would do, but FBGEMM's sharded
# kernels need a multiple of 4 columns, so the bias is the sum of 4 learned columns.
FIRST_ORDER_WIDTH = 4
FIRST_ORDER_SUFFIX = "__first_order"

_POOLING = {Pooling.sum: PoolingType.SUM, Pooling.mean: PoolingType.MEAN}


def embedding_configs(schema: Schema) -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(
            name=t.name,
            embedding_dim=t.embedding_dim,
            num_embeddings=t.num_buckets,
            feature_names=list(t.features),
            pooling=_POOLING[t.pooling],
        )
        for t in schema.tables
    ]


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
    """Embedding lookups: KJT -> pooled [B, F, D] and first-order [B, F], in schema order."""

    def __init__(self, schema: Schema, first_order: bool, device: torch.device | None = None):
        super().__init__()
        self.feature_names = [f.name for f in schema.sparse_features]
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
        vectors = torch.stack([pooled[name] for name in self.feature_names], dim=1)
        if self.first_order_bags is None:
            return vectors, None
        biases = self.first_order_bags(features).to_dict()
        return vectors, torch.stack([biases[name].sum(dim=1) for name in self.feature_names], dim=1)


class DLRM(nn.Module):
    """Embedding bags + dense arch + dot interaction + over arch (+ first-order terms)."""

    def __init__(self, schema: Schema, config: ModelConfig, device: torch.device | None = None):
        super().__init__()
        self.head_config = head_config(schema, config)
        self.sparse_arch = SparseArch(schema, config.first_order, device)
        self.head = DLRMHead(self.head_config)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled, first_order = self.sparse_arch(sparse)
        return self.head(dense, pooled, first_order)


def head_config(schema: Schema, config: ModelConfig) -> HeadConfig:
    dims = {t.name: t.embedding_dim for t in schema.tables}
    if any(d != config.embedding_dim for d in dims.values()):
        raise ConfigError(
            f"model=dlrm takes dot products between embeddings, so every table needs "
            f"model.embedding_dim={config.embedding_dim}; got {dims}. Drop the per-table "
            f"data.tables.<name>.embedding_dim overrides."
        )
    return HeadConfig(
        num_dense=len(schema.dense_features),
        num_sparse=len(schema.sparse_features),
        embedding_dim=config.embedding_dim,
        dense_arch=tuple(config.dense_arch),
        over_arch=tuple(config.over_arch),
        first_order=config.first_order,
        dropout=config.dropout,
        feature_dropout=tuple(f.dropout for f in schema.sparse_features),
        deep_embeddings=config.deep_embeddings,
    )


def build_model(schema: Schema, config: ModelConfig, device: torch.device | None = None) -> DLRM:
    """The model named by `model.name` (tables on `device`; "meta" lets DMP place shards)."""
    if config.name != "dlrm":
        raise ConfigError(f"model.name={config.name!r} is not a known model; known: ['dlrm'].")
    return DLRM(schema, config, device)
