"""The click model: TorchRec embedding bags built from the schema, then `DLRMHead`.

The model maps (dense, KeyedJaggedTensor) to logits and knows nothing of loss, optimizer,
device or process group; `recsys.train` wraps it.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from recsys.config import ConfigError, ModelConfig, Schema
from recsys.model.head import DLRMHead, HeadConfig
from recsys.model.sparse import SparseArch


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
