"""DCNv2 head (Wang et al. 2021, "DCN V2"), in plain torch so the scorer can rebuild it.

x0 = concat(dense arch output or the raw dense values, every pooled embedding). Each cross layer
computes x_{l+1} = x0 * (W x_l + b) + x_l: explicit feature crosses whose degree grows by one
per layer, at the cost of one d x d matrix, or of U V^T with rank r << d (`low_rank`). The deep
part (an MLP, `model.over_arch`) either reads the cross output (stacked) or x0 beside it
(parallel). Embedding dims may differ per table: nothing here takes a dot product between them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from recsys.config import ConfigError, DCNStructure, ModelConfig, ModelName
from recsys.model.head import FeatureDropout, feature_dims, mlp
from recsys.schema import Schema


@dataclass(frozen=True)
class DCNConfig:
    """Shapes of the DCN head; saved in the export manifest to rebuild it for serving."""

    architecture: ClassVar[str] = ModelName.dcn.value

    num_dense: int
    embedding_dims: tuple[int, ...]  # per sparse feature, schema order
    dense_arch: tuple[int, ...]  # hidden sizes -> dense_out; () feeds the raw dense values
    dense_out: int
    cross_layers: int
    low_rank: int | None
    structure: str  # a DCNStructure value; a plain string in the export manifest
    over_arch: tuple[int, ...]  # the deep part's hidden sizes
    first_order: bool
    dropout: float = 0.0
    feature_dropout: tuple[float, ...] = ()

    @property
    def input_dim(self) -> int:
        dense = (self.dense_out if self.dense_arch else self.num_dense) if self.num_dense else 0
        return dense + sum(self.embedding_dims)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> DCNConfig:
        keys = ("embedding_dims", "dense_arch", "over_arch", "feature_dropout")
        return DCNConfig(**{**d, **{k: tuple(d.get(k, ())) for k in keys}})

    @staticmethod
    def from_model(schema: Schema, config: ModelConfig) -> DCNConfig:
        if config.cross_layers < 0:
            raise ConfigError(f"model.cross_layers={config.cross_layers}: need >= 0.")
        if config.low_rank is not None and config.low_rank < 1:
            raise ConfigError(
                f"model.low_rank={config.low_rank}: need >= 1, or null for full-rank layers."
            )
        return DCNConfig(
            num_dense=len(schema.dense_features),
            embedding_dims=feature_dims(schema),
            dense_arch=tuple(config.dense_arch),
            dense_out=config.embedding_dim,
            cross_layers=config.cross_layers,
            low_rank=config.low_rank,
            structure=DCNStructure(config.structure).value,
            over_arch=tuple(config.over_arch),
            first_order=config.first_order,
            dropout=config.dropout,
            feature_dropout=tuple(f.dropout for f in schema.sparse_features),
        )


class CrossLayer(nn.Module):
    """x_{l+1} = x0 * (W x_l + b) + x_l, with W full (d x d) or U V^T (rank r)."""

    def __init__(self, dim: int, low_rank: int | None):
        super().__init__()
        if low_rank is None:
            self.down, self.up = None, nn.Linear(dim, dim)
        else:
            # down.weight is V^T [r, d], up.weight is U [d, r]: up(down(x)) = U V^T x + b.
            self.down, self.up = nn.Linear(dim, low_rank, bias=False), nn.Linear(low_rank, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        projected = self.up(x if self.down is None else self.down(x))
        return x0 * projected + x


class CrossNet(nn.Module):
    def __init__(self, dim: int, num_layers: int, low_rank: int | None):
        super().__init__()
        self.layers = nn.ModuleList(CrossLayer(dim, low_rank) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


class DCNHead(nn.Module):
    """Cross network + deep MLP (stacked or parallel) -> logit, plus first-order terms."""

    def __init__(self, config: DCNConfig):
        super().__init__()
        self.config = config
        has_dense = config.num_dense > 0
        self.dense_arch = (
            mlp([config.num_dense, *config.dense_arch, config.dense_out])
            if has_dense and config.dense_arch
            else None
        )
        dim = config.input_dim
        self.cross = CrossNet(dim, config.cross_layers, config.low_rank)
        if config.structure == DCNStructure.stacked:
            self.deep = mlp([dim, *config.over_arch, 1], config.dropout, last_activation=False)
            self.final = None
        else:
            self.deep = mlp([dim, *config.over_arch], config.dropout)
            deep_out = config.over_arch[-1] if config.over_arch else 0
            self.final = nn.Linear(dim + deep_out, 1)
        self.dense_linear = (
            nn.Linear(config.num_dense, 1) if config.first_order and has_dense else None
        )
        self.feature_dropout = FeatureDropout(config.feature_dropout, config.embedding_dims)

    def logit_layer(self) -> nn.Linear:
        """The layer that writes the cross and deep part's logit (recsys.model.head.silence)."""
        return self.final if self.final is not None else self.deep[-1]

    def forward(
        self, dense: torch.Tensor, embeddings: torch.Tensor, first_order: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits [B]; inputs as for every head (see `recsys.model.head`)."""
        embeddings, first_order = self.feature_dropout(embeddings, first_order)
        dense_part = dense if self.dense_arch is None else self.dense_arch(dense)
        x0 = torch.cat([dense_part, embeddings], dim=1)
        crossed = self.cross(x0)
        if self.final is None:
            logits = self.deep(crossed).squeeze(-1)
        else:
            logits = self.final(torch.cat([crossed, self.deep(x0)], dim=1)).squeeze(-1)
        if first_order is not None:
            logits = logits + first_order.sum(dim=1)
        if self.dense_linear is not None:
            logits = logits + self.dense_linear(dense).squeeze(-1)
        return logits
