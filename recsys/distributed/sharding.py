"""Sharding the model with TorchRec: planner, DistributedModelParallel, fused sparse optimizer.

The planner decides where every table lives (table-, column-, row-wise or replicated) from the
tables' sizes and the topology; the dense part is replicated and kept in sync by DDP.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.model_parallel import get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.types import ShardingPlan
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from recsys.config import ConfigError, TrainerConfig
from recsys.distributed.env import DistEnv

log = logging.getLogger(__name__)


_SPARSE_OPTIMIZERS = {
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}


def attach_sparse_optimizer(tables: nn.Module, trainer: TrainerConfig, lr: float) -> None:
    """Fuse the sparse optimizer into the embedding backward pass of `tables`.

    Fused, the update happens inside FBGEMM's backward kernel: gradients for huge tables are
    never materialised as dense tensors, and only the rows touched by the batch move.
    """
    if trainer.sparse_optimizer not in _SPARSE_OPTIMIZERS:
        raise ConfigError(
            f"trainer.sparse_optimizer={trainer.sparse_optimizer!r}; "
            f"choose one of {sorted(_SPARSE_OPTIMIZERS)}."
        )
    if trainer.sparse_optimizer == "adam" and trainer.device == "cpu":
        raise ConfigError(
            "trainer.sparse_optimizer=adam: FBGEMM's CPU kernels have no fused Adam; "
            "use rowwise_adagrad, adagrad or sgd on CPU, or trainer.device=cuda."
        )
    kwargs = {"lr": lr, "weight_decay": trainer.sparse_weight_decay}
    apply_optimizer_in_backward(
        _SPARSE_OPTIMIZERS[trainer.sparse_optimizer], tables.parameters(), kwargs
    )


def shard_model(model: nn.Module, env: DistEnv) -> tuple[DistributedModelParallel, ShardingPlan]:
    """Plan collectively over all ranks, then wrap in DistributedModelParallel."""
    topology = Topology(world_size=env.world_size, compute_device=env.device.type)
    planner = EmbeddingShardingPlanner(topology=topology)
    plan = planner.collective_plan(model, get_default_sharders(), dist.GroupMember.WORLD)
    sharded = DistributedModelParallel(module=model, device=env.device, plan=plan)
    return sharded, plan


def full_state_dict(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor] | None:
    """The unsharded state on rank 0 (None on others). A collective: every rank must call it."""
    full: dict[str, torch.Tensor] = {}
    for key, value in _state_items(model):
        if isinstance(value, ShardedTensor):
            out = torch.empty(value.size(), dtype=value.dtype) if env.is_main else None
            value.gather(dst=0, out=out)
            value = out
        elif isinstance(value, DTensor):
            value = value.full_tensor()
        if env.is_main and value is not None:
            full[key] = value.detach().cpu().clone()
    return full if env.is_main else None


def _state_items(model: nn.Module) -> Iterator[tuple[str, object]]:
    yield from model.state_dict().items()
