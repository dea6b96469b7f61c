"""Latent-factor (matrix factorisation) head, usable as a two-tower retrieval model.

Every feature belongs to the user side or the item side (`data.features.<f>.tower`). The user
vector is the sum of the user side's pooled embeddings (plus a linear map of its dense
features), the item vector likewise; the logit is <u, v> + user bias + item bias + global bias,
where a side's bias is the sum of its features' first-order weights (plus a linear term of its
dense features). Each side is computed from its own features alone, so a retrieval system can
embed users and items separately and rank items by <u, v> + item bias. Plain torch, so the
scorer rebuilds the towers from the export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from recsys.config import ConfigError, ModelConfig, ModelName, Tower
from recsys.model.head import FeatureDropout, require_one_dim
from recsys.schema import Schema

SIDES = (Tower.user.value, Tower.item.value)


@dataclass(frozen=True)
class MFConfig:
    """Shapes and towers of the MF head; saved in the export manifest for serving."""

    architecture: ClassVar[str] = ModelName.mf.value

    num_dense: int
    embedding_dim: int
    sparse_towers: tuple[str, ...]  # per sparse feature, schema order: "user" | "item"
    dense_towers: tuple[str, ...]  # per dense feature, schema order
    first_order: bool
    feature_dropout: tuple[float, ...] = ()

    def sparse_index(self, side: str) -> list[int]:
        return [i for i, t in enumerate(self.sparse_towers) if t == side]

    def dense_index(self, side: str) -> list[int]:
        return [i for i, t in enumerate(self.dense_towers) if t == side]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> MFConfig:
        keys = ("sparse_towers", "dense_towers", "feature_dropout")
        return MFConfig(**{**d, **{k: tuple(d.get(k, ())) for k in keys}})

    @staticmethod
    def from_model(schema: Schema, config: ModelConfig) -> MFConfig:
        untowered = [f.name for f in schema.features if f.tower is None]
        if untowered:
            raise ConfigError(
                f"model=mf puts every feature in the user or the item tower, but "
                f"{', '.join(f'data.features.{n}.tower' for n in untowered)} is not set; "
                f"set it to user or item in conf/data/ (or override, e.g. "
                f"data.features.{untowered[0]}.tower=user)."
            )
        dims = require_one_dim(
            schema, config, "sums embeddings and takes <user, item> dot products"
        )
        towers = tuple(f.tower.value for f in schema.sparse_features)
        for side in SIDES:
            if side not in towers:
                raise ConfigError(
                    f"model=mf needs at least one sparse feature with tower={side} in "
                    f"data.features; found towers {dict(zip(dims, towers, strict=True))}."
                )
        return MFConfig(
            num_dense=len(schema.dense_features),
            embedding_dim=config.embedding_dim,
            sparse_towers=towers,
            dense_towers=tuple(f.tower.value for f in schema.dense_features),
            first_order=config.first_order,
            feature_dropout=tuple(f.dropout for f in schema.sparse_features),
        )


class MFHead(nn.Module):
    """<user vector, item vector> + user bias + item bias + global bias."""

    def __init__(self, config: MFConfig):
        super().__init__()
        self.config = config
        dim = config.embedding_dim
        dense_sides = [s for s in SIDES if config.dense_index(s)]
        # A side's dense features move its vector (and, with first_order, its bias).
        self.dense_maps = nn.ModuleDict(
            {s: nn.Linear(len(config.dense_index(s)), dim) for s in dense_sides}
        )
        self.dense_bias = nn.ModuleDict(
            {s: nn.Linear(len(config.dense_index(s)), 1, bias=False) for s in dense_sides}
            if config.first_order
            else {}
        )
        self.global_bias = nn.Parameter(torch.zeros(()))
        num_sparse = len(config.sparse_towers)
        self.feature_dropout = FeatureDropout(config.feature_dropout, (dim,) * num_sparse)

    def tower(
        self,
        side: str,
        dense: torch.Tensor,
        embeddings: torch.Tensor,
        first_order: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One side's (vectors [B, D], biases [B]) from that side's features only.

        Args:
            side: "user" or "item".
            dense: [B, this side's dense features], schema order.
            embeddings: [B, this side's sparse features * D], schema order.
            first_order: [B, this side's sparse features], or None when first_order is off.
        """
        batch = embeddings.shape[0]
        vectors = embeddings.reshape(batch, -1, self.config.embedding_dim).sum(dim=1)
        biases = embeddings.new_zeros(batch) if first_order is None else first_order.sum(dim=1)
        if side in self.dense_maps:
            vectors = vectors + self.dense_maps[side](dense)
        if side in self.dense_bias:
            biases = biases + self.dense_bias[side](dense).squeeze(-1)
        return vectors, biases

    def forward(
        self, dense: torch.Tensor, embeddings: torch.Tensor, first_order: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits [B]; inputs as for every head (see `recsys.model.head`)."""
        embeddings, first_order = self.feature_dropout(embeddings, first_order)
        pooled = embeddings.reshape(embeddings.shape[0], -1, self.config.embedding_dim)
        (user, user_bias), (item, item_bias) = (
            self.tower(*self.split(side, dense, pooled, first_order)) for side in SIDES
        )
        return (user * item).sum(dim=1) + user_bias + item_bias + self.global_bias

    def split(
        self, side: str, dense: torch.Tensor, pooled: torch.Tensor, first_order: torch.Tensor | None
    ) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The arguments of `tower(side, ...)`, picked from inputs holding every feature."""
        sparse = self.config.sparse_index(side)
        side_first_order = None if first_order is None else first_order[:, sparse]
        return (
            side,
            dense[:, self.config.dense_index(side)],
            pooled[:, sparse].flatten(1),
            side_first_order,
        )
