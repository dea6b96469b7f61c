"""The dense part of the DLRM click model, in plain torch (no torchrec), and pieces every head
shares.

Everything after the embedding lookup lives in a head: here the dense arch, the pairwise
interaction, the over arch and the first-order (wide) term. Keeping heads free of torchrec lets
the serving scorer rebuild them from the export with nothing but torch.

Every head takes the same inputs: dense [B, num_dense], the pooled embeddings of the sparse
features concatenated in schema order [B, sum of their dims], and the per-feature first-order
weights [B, num_sparse] (None when first_order is off); it returns logits [B].
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from recsys.config import ConfigError, ModelConfig, ModelName
from recsys.schema import Schema


@dataclass(frozen=True)
class HeadConfig:
    """Shapes of the DLRM dense part; saved in the export manifest to rebuild it for serving."""

    architecture: ClassVar[str] = ModelName.dlrm.value

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

    @staticmethod
    def from_model(schema: Schema, config: ModelConfig) -> HeadConfig:
        require_one_dim(schema, config, "takes dot products between embeddings")
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


def feature_dims(schema: Schema) -> tuple[int, ...]:
    """Embedding dim of each sparse feature (its tables'), in schema order."""
    # Through the feature's first lookup: a qr table exists only as `<t>__q` and `<t>__r`.
    return tuple(
        schema.table(schema.lookups_of(f.name)[0].table).embedding_dim
        for f in schema.sparse_features
    )


def require_one_dim(schema: Schema, config: ModelConfig, because: str) -> dict[str, int]:
    """Each sparse feature's dim, all of them `model.embedding_dim`, or a ConfigError naming
    the model, why it needs one dim, the dims found and the fix."""
    dims = dict(zip((f.name for f in schema.sparse_features), feature_dims(schema), strict=True))
    if any(d != config.embedding_dim for d in dims.values()):
        raise ConfigError(
            f"model={config.name} {because}, so every table needs "
            f"model.embedding_dim={config.embedding_dim}; got {dims}. Drop the per-table "
            f"data.tables.<name>.embedding_dim overrides (model=dcn allows them)."
        )
    return dims


def mlp(sizes: list[int], dropout: float = 0.0, last_activation: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(FastDropout(dropout))
    return nn.Sequential(*layers)


class FastDropout(nn.Module):
    """nn.Dropout with a cheaper random mask on CPU; torch's own fused kernel elsewhere.

    torch's CPU dropout draws one random number per element (`bernoulli_`): forward and
    backward of a [4096, 64] activation took 2.05 ms on 2 cores, and the over arch's two
    dropouts were 8% of a Criteo-shape step at batch 4096. Here one 64-bit draw gives four
    16-bit uniforms, each kept when at or above round(p * 2^16): 0.61 ms (91 vs 220 us at
    [512, 64]). The kept share is that of the rounded threshold, and kept values are scaled by
    its inverse, so the output stays unbiased. No parameters: state dicts are nn.Dropout's.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p}: need 0 <= p < 1")
        self.p = p
        self._dropped = round(p * _LANES)  # 16-bit draws below this are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self._dropped:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self._dropped - _LANES // 2
        return x * (keep.to(x.dtype) * (_LANES / (_LANES - self._dropped)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


_LANES = 1 << 16  # values of one 16-bit draw


def pairwise_dot(vectors: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> [B, N*(N-1)/2]: dot products of every pair (upper triangle, no diagonal)."""
    return _PairwiseDot.apply(vectors)


class _PairwiseDot(torch.autograd.Function):
    """The Gram matrix's upper triangle, with a backward that writes no zeros each step.

    Forward: one bmm, then one index_select over the flattened Gram matrix (advanced indexing
    gram[:, rows, cols] costs an index_put with accumulation in backward: 7% of a
    Criteo-layout step on CPU). Autograd's backward of that index_select zero-fills a fresh
    [B, N*N] gradient every step, which at batch 4096 (N = 27: 12 MiB) took 3.2 ms of a
    ~29 ms step. Here the upper triangle's gradients are copied into a buffer kept per shape,
    whose other entries were zeroed once and are never written: (G + G^T) V is then two bmms.
    """

    @staticmethod
    def forward(ctx, vectors: torch.Tensor) -> torch.Tensor:
        n = vectors.shape[1]
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        ctx.save_for_backward(vectors)
        return gram.flatten(1).index_select(1, _upper_triangle(n, vectors.device))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (vectors,) = ctx.saved_tensors
        b, n, _ = vectors.shape
        upper = _upper_gradient_buffer(b, n, grad.dtype, grad.device)
        # scatter_, not index_copy_: 303 vs 881 us at [4096, 351] on 2 cores
        positions = _upper_triangle(n, grad.device).expand(b, -1)
        upper.flatten(1).scatter_(1, positions, grad)
        out = torch.bmm(upper, vectors)
        return out.baddbmm_(upper.transpose(1, 2), vectors)


_UPPER_BUFFERS: dict[tuple, torch.Tensor] = {}  # (B, N, dtype, device) -> [B, N, N] buffer


def _upper_gradient_buffer(b: int, n: int, dtype: torch.dtype, device: torch.device):
    """A zeroed [b, n, n] buffer whose upper triangle the caller overwrites; one per shape
    (training uses one batch size, so one buffer; a new shape drops the others)."""
    key = (b, n, dtype, device)
    buffer = _UPPER_BUFFERS.get(key)
    if buffer is None:
        _UPPER_BUFFERS.clear()
        buffer = _UPPER_BUFFERS[key] = torch.zeros(b, n, n, dtype=dtype, device=device)
    return buffer


@functools.cache
def _upper_triangle(n: int, device: torch.device) -> torch.Tensor:
    """Flat positions (row * n + col) of the n x n upper triangle without the diagonal."""
    rows, cols = torch.triu_indices(n, n, offset=1, device=device)
    return rows * n + cols


class FeatureDropout(nn.Module):
    """In training, blank sparse feature f of each row with probability rates[f] (none if empty).

    An id never seen in training hashes to an untrained, near-zero row. Unless the model
    meets such rows while training, it has never learnt to predict without them: blanking
    features at random teaches it to fall back on the others (DropoutNet, Volkovs et al.
    2017). No rescaling: a blank means "unknown", as it will for a new id.
    """

    def __init__(self, rates: tuple[float, ...], dims: tuple[int, ...]):
        super().__init__()
        self.active = any(rates)
        # Not persistent: derived from the config, so the export's state dict stays the same.
        self.register_buffer("rates", torch.tensor(rates, dtype=torch.float32), persistent=False)
        self.register_buffer("dims", torch.tensor(dims, dtype=torch.long), persistent=False)

    def forward(
        self, embeddings: torch.Tensor, first_order: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.training or not self.active:
            return embeddings, first_order
        shape = (embeddings.shape[0], len(self.rates))
        keep = (torch.rand(shape, device=embeddings.device) >= self.rates).to(embeddings.dtype)
        embeddings = embeddings * keep.repeat_interleave(self.dims, dim=1)
        return embeddings, None if first_order is None else first_order * keep


def silence(head: nn.Module) -> bool:
    """Zero the layer that writes the logit of a head's part beyond its first-order terms
    (`logit_layer`), so the head predicts its first-order terms alone until it learns more:
    a head warm-started from a trained first-order model (the first-order stage) then starts
    exactly where that model ended. False for heads without such a layer (LR, FM, MF)."""
    layer = getattr(head, "logit_layer", None)
    if layer is None:
        return False
    with torch.no_grad():
        layer().weight.zero_()
        layer().bias.zero_()
    return True


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
        self.feature_dropout = FeatureDropout(config.feature_dropout, (dim,) * config.num_sparse)

    def logit_layer(self) -> nn.Linear:
        """The layer that writes the interaction part's logit (see `silence`)."""
        return self.over_arch[-1]

    def forward(
        self, dense: torch.Tensor, embeddings: torch.Tensor, first_order: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits [B] from dense [B, num_dense], embeddings [B, num_sparse * D] and
        first-order weights [B, num_sparse] (None when first_order is off)."""
        embeddings, first_order = self.feature_dropout(embeddings, first_order)
        pooled = embeddings.reshape(-1, self.config.num_sparse, self.config.embedding_dim)
        vectors, over_inputs = [pooled], []
        if self.dense_arch is not None:
            dense_vector = self.dense_arch(dense)
            vectors.insert(0, dense_vector.unsqueeze(1))
            over_inputs.append(dense_vector)
        over_inputs.append(pairwise_dot(torch.cat(vectors, dim=1)))
        if self.config.deep_embeddings:
            over_inputs.append(embeddings)
        logits = self.over_arch(torch.cat(over_inputs, dim=1)).squeeze(-1)
        if first_order is not None:
            logits = logits + first_order.sum(dim=1)
        if self.dense_linear is not None:
            logits = logits + self.dense_linear(dense).squeeze(-1)
        return logits
