"""The dense part of the click model, in plain torch (no torchrec).

Everything after the embedding lookup lives here: the dense arch, the pairwise interaction,
the over arch and the first-order (wide) term. Keeping it free of torchrec lets the serving
scorer rebuild it from the export with nothing but torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    """Shapes of the dense part; saved in the export manifest to rebuild it for serving."""

    num_dense: int
    num_sparse: int
    embedding_dim: int
    dense_arch: tuple[int, ...]
    over_arch: tuple[int, ...]
    first_order: bool
    dropout: float = 0.0
    feature_dropout: tuple[float, ...] = ()  # per sparse feature; () = none
    deep_embeddings: bool = False  # the over arch also sees the embeddings themselves (DeepFM)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> HeadConfig:
        tuples = {k: tuple(d.get(k, ())) for k in ("dense_arch", "over_arch", "feature_dropout")}
        return HeadConfig(**{**d, **tuples})


def mlp(sizes: list[int], dropout: float = 0.0, last_activation: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def pairwise_dot(vectors: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> [B, N*(N-1)/2]: dot products of every pair (upper triangle, no diagonal)."""
    n = vectors.shape[1]
    gram = torch.bmm(vectors, vectors.transpose(1, 2))
    rows, cols = torch.triu_indices(n, n, offset=1, device=vectors.device)
    return gram[:, rows, cols]


class DLRMHead(nn.Module):
    """Dense arch + dot interaction + over arch, plus a first-order term.

    The first-order term (a global bias, a linear term per dense feature and a learned bias per
    id) is what a logistic regression would learn; the interaction part learns on top of it.
    Without it DLRM-style models memorise ids and generalise worse on sparse logs.
    """

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        dim = config.embedding_dim
        has_dense = config.num_dense > 0
        self.dense_arch = mlp([config.num_dense, *config.dense_arch, dim]) if has_dense else None
        num_vectors = config.num_sparse + int(has_dense)
        num_inputs = num_vectors * (num_vectors - 1) // 2 + (dim if has_dense else 0)
        num_inputs += config.num_sparse * dim if config.deep_embeddings else 0
        self.over_arch = mlp(
            [num_inputs, *config.over_arch, 1], config.dropout, last_activation=False
        )
        self.dense_linear = (
            nn.Linear(config.num_dense, 1) if config.first_order and has_dense else None
        )
        # Not persistent: derived from the config, so the export's state dict stays the same.
        self.register_buffer("drop_p", torch.tensor(config.feature_dropout), persistent=False)

    def forward(
        self, dense: torch.Tensor, pooled: torch.Tensor, first_order: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits [B] from dense [B, num_dense], pooled [B, num_sparse, D] and per-feature
        first-order weights [B, num_sparse] (None when first_order is off)."""
        pooled, first_order = self._drop_features(pooled, first_order)
        vectors, over_inputs = [pooled], []
        if self.dense_arch is not None:
            dense_vector = self.dense_arch(dense)
            vectors.insert(0, dense_vector.unsqueeze(1))
            over_inputs.append(dense_vector)
        over_inputs.append(pairwise_dot(torch.cat(vectors, dim=1)))
        if self.config.deep_embeddings:
            over_inputs.append(pooled.flatten(1))
        logits = self.over_arch(torch.cat(over_inputs, dim=1)).squeeze(-1)
        if first_order is not None:
            logits = logits + first_order.sum(dim=1)
        if self.dense_linear is not None:
            logits = logits + self.dense_linear(dense).squeeze(-1)
        return logits

    def _drop_features(
        self, pooled: torch.Tensor, first_order: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """In training, blank sparse feature f of each row with probability feature_dropout[f].

        An id never seen in training hashes to an untrained, near-zero row. Unless the model
        meets such rows while training, it has never learnt to predict without them: blanking
        features at random teaches it to fall back on the others (DropoutNet, Volkovs et al.
        2017). No rescaling: a blank means "unknown", as it will for a new id.
        """
        if not self.training or not any(self.config.feature_dropout):
            return pooled, first_order
        keep = (torch.rand(pooled.shape[:2], device=pooled.device) >= self.drop_p).to(pooled.dtype)
        pooled = pooled * keep.unsqueeze(-1)
        return pooled, None if first_order is None else first_order * keep
