"""What users would write instead of recsys, trained on the same pre-made batches.

* `TorchRecLoop`: TorchRec's own DLRM (`torchrec.models.dlrm.DLRM` in `DLRMTrain`) under
  `DistributedModelParallel` with its default plan, RowWiseAdagrad fused into the embedding
  backward (`apply_optimizer_in_backward`), AdamW on the dense part, and a bare
  zero_grad / forward / backward / step loop: the torchrec_dlrm example, minus its data.
* `PlainLoop`: plain PyTorch, one `nn.EmbeddingBag(sparse=True)` per table, Adagrad on the
  sparse gradients (the optimizer that accepts them and is closest to row-wise Adagrad),
  AdamW on the same dense part (dense arch, pairwise dot products, over arch).

Both take their shapes (tables, embedding dim, MLP sizes, learning rates) from the recsys
config and schema, so the three train the same model save recsys' first-order terms and
dropout. `run(steps)` trains that many steps and returns them with the wall-clock seconds.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.datasets.utils import Batch as TorchRecBatch
from torchrec.distributed import DistributedModelParallel
from torchrec.models.dlrm import DLRM, DLRMTrain
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.config import TrainConfig
from recsys.data.batch import Batch
from recsys.schema import Schema


@dataclass(frozen=True)
class DLRMShape:
    """The model every contender trains, from the recsys config (model=dlrm)."""

    num_dense: int
    dim: int
    dense_arch: tuple[int, ...]  # hidden sizes; the last layer maps to `dim`
    over_arch: tuple[int, ...]  # hidden sizes; the last layer maps to 1 logit
    lr: float  # AdamW, dense part
    sparse_lr: float  # (row-wise) Adagrad, tables

    @staticmethod
    def from_config(cfg: TrainConfig, schema: Schema) -> DLRMShape:
        return DLRMShape(
            num_dense=len(schema.dense_features),
            dim=cfg.model.embedding_dim,
            dense_arch=tuple(cfg.model.dense_arch),
            over_arch=tuple(cfg.model.over_arch),
            lr=cfg.trainer.lr,
            sparse_lr=cfg.trainer.sparse_lr,
        )


def _timed(
    step, batches: list, steps: int, device: torch.device, max_seconds: float
) -> tuple[int, float]:
    """(steps taken, seconds): `steps` steps, or fewer if `max_seconds` ran out first."""
    start = time.perf_counter()
    taken = 0
    for batch in itertools.islice(itertools.cycle(batches), steps):
        step(batch)
        taken += 1
        if time.perf_counter() - start > max_seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return taken, time.perf_counter() - start


class TorchRecLoop:
    """TorchRec's DLRM, sharded by DistributedModelParallel as its examples do."""

    def __init__(self, schema: Schema, shape: DLRMShape, batches: list[Batch], device):
        tables = [
            EmbeddingBagConfig(
                name=t.name,
                embedding_dim=shape.dim,
                num_embeddings=t.num_buckets,
                feature_names=list(t.features),
            )
            for t in schema.tables
        ]
        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        dlrm = DLRM(
            embedding_bag_collection=ebc,
            dense_in_features=shape.num_dense,
            dense_arch_layer_sizes=[*shape.dense_arch, shape.dim],
            over_arch_layer_sizes=[*shape.over_arch, 1],
        )
        apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": shape.sparse_lr})
        self.device = device
        self.model = DistributedModelParallel(module=DLRMTrain(dlrm), device=device)
        dense = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(self.model.named_parameters())),
            lambda params: torch.optim.AdamW(params, lr=shape.lr),
        )
        self.optimizer = CombinedOptimizer([self.model.fused_optimizer, dense])
        self.batches = [
            TorchRecBatch(b.dense, b.sparse, b.labels).to(device, non_blocking=True)
            for b in batches
        ]

    def step(self, batch: TorchRecBatch) -> None:
        self.optimizer.zero_grad()
        loss, _ = self.model(batch)
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int, max_seconds: float = float("inf")) -> tuple[int, float]:
        """Train `steps` steps (fewer if `max_seconds` runs out): (steps, seconds)."""
        self.model.train()
        return _timed(self.step, self.batches, steps, self.device, max_seconds)


def mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*(layers if last_activation else layers[:-1]))


class PlainDLRM(nn.Module):
    """DLRM in plain PyTorch: an nn.EmbeddingBag per table, sparse gradients."""

    def __init__(self, schema: Schema, shape: DLRMShape):
        super().__init__()
        self.tables = nn.ModuleList(
            nn.EmbeddingBag(
                t.num_buckets,
                shape.dim,
                mode=t.pooling.value,
                sparse=True,
                include_last_offset=True,  # offsets as a KJT has them: B + 1 of them
            )
            for t in schema.tables
        )
        index = {t.name: i for i, t in enumerate(schema.tables)}
        self.table_of = [index[lk.table] for lk in schema.lookups]  # per KJT key
        self.dense_arch = mlp([shape.num_dense, *shape.dense_arch, shape.dim], True)
        n = len(self.table_of) + 1
        self.register_buffer("pairs", torch.triu_indices(n, n, offset=1), persistent=False)
        self.over_arch = mlp([shape.dim + n * (n - 1) // 2, *shape.over_arch, 1], False)

    def forward(self, dense: torch.Tensor, bags: list[tuple[torch.Tensor, torch.Tensor]]):
        x = self.dense_arch(dense)
        pooled = [
            self.tables[t](ids, offsets)
            for t, (ids, offsets) in zip(self.table_of, bags, strict=True)
        ]
        vectors = torch.stack([x, *pooled], dim=1)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        interactions = gram[:, self.pairs[0], self.pairs[1]]
        return self.over_arch(torch.cat([x, interactions], dim=1)).squeeze(1)


class PlainLoop:
    """Plain PyTorch: EmbeddingBag tables with Adagrad on sparse gradients, AdamW dense."""

    def __init__(self, schema: Schema, shape: DLRMShape, batches: list[Batch], device):
        self.device = device
        self.model = PlainDLRM(schema, shape).to(device)
        self.sparse = torch.optim.Adagrad(self.model.tables.parameters(), lr=shape.sparse_lr)
        dense = [p for name, p in self.model.named_parameters() if not name.startswith("tables.")]
        self.dense = torch.optim.AdamW(dense, lr=shape.lr)
        keys = schema.lookup_keys
        self.batches = [
            (
                b.dense.to(device),
                [(jt.values().to(device), jt.offsets().to(device)) for jt in _jagged(b, keys)],
                b.labels.to(device),
            )
            for b in batches
        ]

    def step(self, batch) -> None:
        dense, bags, labels = batch
        self.sparse.zero_grad()
        self.dense.zero_grad()
        loss = F.binary_cross_entropy_with_logits(self.model(dense, bags), labels)
        loss.backward()
        self.sparse.step()
        self.dense.step()

    def run(self, steps: int, max_seconds: float = float("inf")) -> tuple[int, float]:
        """Train `steps` steps (fewer if `max_seconds` runs out): (steps, seconds)."""
        self.model.train()
        return _timed(self.step, self.batches, steps, self.device, max_seconds)


def _jagged(batch: Batch, keys: list[str]) -> list:
    by_key = batch.sparse.to_dict()
    return [by_key[k] for k in keys]


__all__ = ["DLRMShape", "PlainDLRM", "PlainLoop", "TorchRecLoop"]
