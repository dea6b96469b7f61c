"""Sharding the model with TorchRec: planner, DistributedModelParallel, fused sparse optimizer.

The planner decides where every table lives (table-, column-, row-wise or replicated) from the
tables' sizes and the topology; the dense part is replicated and kept in sync by DDP (on more
than one process: a world of one has nothing to sync).
Choices (`sharding.type`, `trainer.sparse_optimizer` on this device) are checked by
`recsys.train.validate` before a run starts.
"""

from __future__ import annotations

import logging
import zlib

import torch
import torch.distributed as dist
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.mc_embeddingbag import (
    ManagedCollisionEmbeddingBagCollectionSharder,
    ShardedManagedCollisionEmbeddingBagCollection,
)
from torchrec.distributed.model_parallel import DataParallelWrapper, get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.distributed.types import ShardingType as TorchrecShardingType
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from recsys.config import ShardingType, SparseOptimizer, TrainerConfig
from recsys.distributed.env import DistEnv
from recsys.model.managed import remap_modules

log = logging.getLogger(__name__)

_SPARSE_OPTIMIZERS = {
    SparseOptimizer.rowwise_adagrad: RowWiseAdagrad,
    SparseOptimizer.adagrad: torch.optim.Adagrad,
    SparseOptimizer.sgd: torch.optim.SGD,
    SparseOptimizer.adam: torch.optim.Adam,  # CUDA only: FBGEMM's CPU kernels have none fused
}
_ADAGRADS = (SparseOptimizer.rowwise_adagrad, SparseOptimizer.adagrad)  # they take an eps


def attach_sparse_optimizer(
    tables: nn.Module, trainer: TrainerConfig, lr: float, eps: float | None = None
) -> None:
    """Fuse the sparse optimizer into the embedding backward pass of `tables`.

    Fused, the update happens inside FBGEMM's backward kernel: gradients for huge tables are
    never materialised as dense tensors, and only the rows touched by the batch move.
    `eps`: the Adagrad optimizers' denominator offset (None: the kernel's default, 1e-8).
    Other optimizers keep their own: SGD has none, and Adam's eps is another thing.
    """
    kind = SparseOptimizer(trainer.sparse_optimizer)
    kwargs = {"lr": lr, "weight_decay": trainer.sparse_weight_decay}
    if eps is not None and kind in _ADAGRADS:
        kwargs["eps"] = eps
    if trainer.sparse_weight_decay > 0:
        # TorchRec hands weight_decay to FBGEMM without a mode, and FBGEMM's default mode
        # ignores it. Its CPU kernels ignore it in every mode (a row's update was identical
        # with none, L2 and decoupled): validation allows it only on GPU, rowwise Adagrad.
        kwargs["weight_decay_mode"] = WeightDecayMode.L2
    apply_optimizer_in_backward(_SPARSE_OPTIMIZERS[kind], tables.parameters(), kwargs)


class CpuRowWiseSharder(EmbeddingBagCollectionSharder):
    """The stock sharder, plus row-wise on CPU.

    TorchRec lists row_wise only for CUDA, yet row-wise is what lets one huge table (billions
    of users) span several hosts. Nothing below the sharder needs CUDA for it: ids are
    bucketized to their row owner by FBGEMM's CPU op and looked up by the CPU TBE kernel.
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        if compute_device_type == "cpu" and TorchrecShardingType.ROW_WISE.value not in types:
            types.append(TorchrecShardingType.ROW_WISE.value)
        return types


def shard_model(
    model: nn.Module, env: DistEnv, sharding_type: ShardingType = ShardingType.auto
) -> tuple[DistributedModelParallel, ShardingPlan]:
    """Plan collectively over all ranks, then wrap in DistributedModelParallel.

    `sharding_type` auto lets the planner choose per table; any other value forces that
    TorchRec type (same name) on every table through ParameterConstraints.
    """
    sharding_type = ShardingType(sharding_type)
    allowed = _allowed_types(sharding_type, env)
    managed = managed_table_names(model)
    constraints = {
        name: ParameterConstraints(sharding_types=allowed)
        for name in table_names(model)
        if allowed is not None and name not in managed
    }
    # TorchRec shards a remap only row-wise: each rank remaps the ids of its input range.
    constraints |= {
        name: ParameterConstraints(sharding_types=[TorchrecShardingType.ROW_WISE.value])
        for name in managed
    }
    _split_remaps(model, env.world_size)
    topology = Topology(world_size=env.world_size, compute_device=env.device.type)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints or None)
    sharders = get_default_sharders()
    if sharding_type == ShardingType.row_wise:
        # Only when asked for: "auto" keeps TorchRec's own CPU choices, whose cost model
        # was never tuned for row-wise on CPU.
        sharders = [
            CpuRowWiseSharder() if isinstance(s, EmbeddingBagCollectionSharder) else s
            for s in sharders
        ]
    if managed:  # in place of TorchRec's (the planner keeps one sharder per module type)
        sharders = [
            ManagedSharder() if isinstance(s, ManagedCollisionEmbeddingBagCollectionSharder) else s
            for s in sharders
        ]
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    sharded = DistributedModelParallel(
        module=model,
        device=env.device,
        plan=plan,
        sharders=sharders,
        data_parallel_wrapper=OneProcess() if env.world_size == 1 else None,
    )
    return sharded, plan


class OneProcess(DataParallelWrapper):
    """No DDP around the dense part of a world of one: its gradients have no other rank to be
    averaged with, yet DDP's forward and its all-reduce hooks ran every step. Without them, 4%
    more samples/s (Criteo layout, batch 512, 2 cores, paired in one process). State-dict keys
    are the same either way (DistributedModelParallel strips DDP's prefix), so checkpoints move
    between one process and several as before."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        dmp._dmp_wrapped_module.to(device)  # what DDP's wrapping would have done


def _allowed_types(asked: ShardingType, env: DistEnv) -> list[str] | None:
    """TorchRec sharding types the planner may pick per table (None: all it knows).

    An explicit `sharding.type` is forced on every table (our names are TorchRec's). auto
    never makes a table data_parallel: that gives a table a dense gradient, a DDP all-reduce
    and a Python optimizer step of its own, and optimizer state under other keys than the
    fused kernels' (a checkpoint written by 2 processes would not resume on 1, where every
    table is whole). On one process auto keeps every table whole (table_wise): one fused
    kernel for all of them trained 8-17% faster than the planner's mix (Criteo layout, 2 cores).
    """
    if asked != ShardingType.auto:
        return [asked.value]
    if env.world_size == 1:
        return [ShardingType.table_wise.value]
    # Whole tables or row shards (where the sharder offers them: GPU). Not column_wise: its
    # single-shard plans equal table_wise with another name in every plan and checkpoint.
    return [ShardingType.table_wise.value, ShardingType.row_wise.value]


def managed_table_names(model: nn.Module) -> set[str]:
    """The tables behind a managed-collision remap (`hashing: managed`)."""
    return {
        name
        for module in model.modules()
        if isinstance(module, ManagedCollisionEmbeddingBagCollection)
        for name in remap_modules(module)
    }


def _split_remaps(model: nn.Module, world_size: int) -> None:
    """Give every remap one input-range bucket per rank, as the planner requires of a
    row-wise remap (the sharder rebuilds each rank's remap over its own bucket and rows)."""
    for module in model.modules():
        if isinstance(module, ManagedCollisionEmbeddingBagCollection):
            for remap in remap_modules(module).values():
                remap._buckets = world_size


class ManagedSharder(ManagedCollisionEmbeddingBagCollectionSharder):
    """TorchRec's managed-collision sharder, made to work on CPU.

    Stock, it offers kernels the CPU has not (UVM caching: the planner fails), and its eviction
    resets a reassigned row through FBGEMM's `reset_weight_momentum`, which has no CPU kernel
    (the first eviction fails). Here the EBC part is `CpuRowWiseSharder` (row-wise on CPU) and
    on CPU a reassigned row is reset in plain torch (`_CpuManagedCollection._evict`). CUDA keeps
    TorchRec's own path, untested here.
    """

    def __init__(self) -> None:
        super().__init__(ebc_sharder=CpuRowWiseSharder())

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> list[str]:
        if compute_device_type != "cpu":
            return super().compute_kernels(sharding_type, compute_device_type)
        return self._e_sharder.compute_kernels(sharding_type, compute_device_type)

    def shard(self, module, params, env, device=None, module_fqn=None):  # noqa: ANN001, ANN201
        if device is None or device.type != "cpu":
            return super().shard(module, params, env, device, module_fqn)
        return _CpuManagedCollection(
            module,
            params,
            ebc_sharder=self._e_sharder,
            mc_sharder=self._mc_sharder,
            env=env,
            device=device,
        )


class _CpuManagedCollection(ShardedManagedCollisionEmbeddingBagCollection):
    def _evict(self, evictions_per_table: dict[str, torch.Tensor | None]) -> None:
        """Rows handed to new ids restart: fresh weights from the table's init range and
        zero optimizer state, as TorchRec does on CUDA. The fresh weights come from a generator
        seeded by table and step, so a resumed run draws the same ones."""
        remaps = remap_modules(self)
        for table, rows in evictions_per_table.items():
            if rows is None or rows.numel() == 0:
                continue
            tbe, index = self._table_to_tbe_and_index[table]
            config = self._embedding_module._table_name_to_config[table]
            step = int(remaps[table]._current_iter)
            seed = zlib.crc32(f"{table}:{step}:{int(rows.min())}".encode())
            generator = torch.Generator().manual_seed(seed)
            weights = tbe.split_embedding_weights()[int(index)]
            fresh = torch.rand((len(rows), weights.shape[1]), generator=generator)
            low, high = config.get_weight_init_min(), config.get_weight_init_max()
            with torch.no_grad():
                weights[rows] = (low + (high - low) * fresh).to(weights.dtype)
                for state in tbe.split_optimizer_states()[int(index)]:
                    state[rows] = 0


def table_names(model: nn.Module) -> list[str]:
    """Every embedding table of every EmbeddingBagCollection in `model`."""
    return [
        config.name
        for module in model.modules()
        if isinstance(module, EmbeddingBagCollection)
        for config in module.embedding_bag_configs()
    ]
