"""The two baselines every click model must beat: hashed logistic regression and an FM.

Both read the same hashed tables as the other heads, so a comparison isolates the model:
- `lr`: logit = global bias + a learned bias per id (the first-order tables) + a linear term
  per dense feature. The hashing trick's classic model (Weinberger et al. 2009).
- `fm`: the LR, plus the sum over every pair of features of <v_i, v_j> (Rendle 2010), where a
  sparse feature's v is its pooled embedding and dense feature k's is x_k * w_k.
Plain torch, so the scorer rebuilds them from the export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from recsys.config import ConfigError, ModelConfig, ModelName
from recsys.model.head import FeatureDropout, require_one_dim
from recsys.schema import Schema


@dataclass(frozen=True)
class LinearConfig:
    """Shapes of the logistic regression; saved in the export manifest for serving."""

    architecture: ClassVar[str] = ModelName.lr.value

    num_dense: int
    num_sparse: int
    first_order: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> LinearConfig:
        return LinearConfig(**d)

    @staticmethod
    def from_model(schema: Schema, config: ModelConfig) -> LinearConfig:
        if not config.first_order:
            raise ConfigError(
                "model=lr learns one bias per id in the first-order tables: it needs "
                "model.first_order=true."
            )
        return LinearConfig(len(schema.dense_features), len(schema.sparse_features))


class LinearHead(nn.Module):
    """Global bias + per-id biases + a linear term of the dense features."""

    def __init__(self, config: LinearConfig):
        super().__init__()
        self.config = config
        self.dense_linear = nn.Linear(config.num_dense, 1)  # with 0 inputs: the global bias

    def forward(
        self, dense: torch.Tensor, embeddings: torch.Tensor, first_order: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits [B]; the embeddings are not read (see `recsys.model.head` for the inputs)."""
        assert first_order is not None, "LinearConfig requires first_order"
        return self.dense_linear(dense).squeeze(-1) + first_order.sum(dim=1)


@dataclass(frozen=True)
class FMConfig:
    """Shapes of the factorization machine; saved in the export manifest for serving."""

    architecture: ClassVar[str] = ModelName.fm.value

    num_dense: int
    num_sparse: int
    embedding_dim: int
    first_order: bool
    feature_dropout: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> FMConfig:
        return FMConfig(**{**d, "feature_dropout": tuple(d.get("feature_dropout", ()))})

    @staticmethod
    def from_model(schema: Schema, config: ModelConfig) -> FMConfig:
        require_one_dim(schema, config, "takes dot products between feature vectors")
        return FMConfig(
            num_dense=len(schema.dense_features),
            num_sparse=len(schema.sparse_features),
            embedding_dim=config.embedding_dim,
            first_order=config.first_order,
            feature_dropout=tuple(f.dropout for f in schema.sparse_features),
        )


class FMHead(nn.Module):
    """Global bias + first-order terms + sum over feature pairs of <v_i, v_j>."""

    def __init__(self, config: FMConfig):
        super().__init__()
        self.config = config
        dim = config.embedding_dim
        self.dense_linear = nn.Linear(config.num_dense, 1)  # with 0 inputs: the global bias
        # Small, as FBGEMM initialises the tables: the pair terms start near zero.
        self.dense_vectors = nn.Parameter(torch.randn(config.num_dense, dim) * 0.01)
        self.feature_dropout = FeatureDropout(config.feature_dropout, (dim,) * config.num_sparse)

    def forward(
        self, dense: torch.Tensor, embeddings: torch.Tensor, first_order: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits [B]; inputs as for every head (see `recsys.model.head`)."""
        embeddings, first_order = self.feature_dropout(embeddings, first_order)
        sparse = embeddings.reshape(-1, self.config.num_sparse, self.config.embedding_dim)
        vectors = torch.cat([sparse, dense.unsqueeze(-1) * self.dense_vectors], dim=1)
        # sum_{i<j} <v_i, v_j> = (|sum_i v_i|^2 - sum_i |v_i|^2) / 2: linear in the features.
        pairs = 0.5 * (vectors.sum(dim=1).square() - vectors.square().sum(dim=1)).sum(dim=1)
        logits = self.dense_linear(dense).squeeze(-1) + pairs
        if first_order is not None:
            logits = logits + first_order.sum(dim=1)
        return logits
