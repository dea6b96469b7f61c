"""Moving values between ranks, in one place.

`all_gather_rows` is the one gather of tensor rows that metrics and predictions share: ranks
hold different numbers of rows (uneven files, padding dropped), so it first agrees on lengths,
pads to the longest, gathers, then trims: one collective for any row count.
`gather_objects` / `broadcast_object` move small Python values (loader progress, RNG states,
paths); they are no-ops in a world of one.
`local_shards` / `export_group` are the opposite: what a rank writes of a sharded table itself
(its own rows, at their offsets), so that nothing is moved at all (recsys.export.tables).
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from recsys.export.tables import ExportGroup, TableShards

if TYPE_CHECKING:
    from recsys.distributed.env import DistEnv


def collective_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Device the group's backend communicates on: CUDA for NCCL, CPU otherwise (gloo)."""
    if dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(rows: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather a ``[k, n_rank]`` tensor whose ``n_rank`` differs per rank.

    Lengths are gathered first, every rank pads to the maximum, gathers, then trims.

    Args:
        rows: Local tensor of shape ``[k, n_rank]``, the same dtype on every rank.
        group: Process group, or ``None`` for the default group.

    Returns:
        The ``[k, sum(n_rank)]`` concatenation in rank order, on CPU, identical on all ranks (the local rows when there is no process group of several).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return rows.cpu()
    device = collective_device(group)
    world = dist.get_world_size(group)
    length = torch.tensor([rows.shape[1]], dtype=torch.int64, device=device)
    lengths = [torch.empty_like(length) for _ in range(world)]
    dist.all_gather(lengths, length, group=group)
    sizes = [int(n) for n in torch.cat(lengths).cpu()]
    padded = torch.zeros(rows.shape[0], max(sizes), dtype=rows.dtype, device=device)
    padded[:, : rows.shape[1]] = rows.to(device)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([g[:, :n].cpu() for g, n in zip(gathered, sizes, strict=True)], dim=1)


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's value of `obj` on every rank."""
    if env.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's value of `obj`, in rank order, on every rank."""
    if env.world_size == 1:
        return [obj]
    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, obj)
    return parts


def held_shards(value: Any) -> TableShards:
    """Every block of a [rows, columns] table state entry this rank holds, at its offsets:
    its ShardedTensor shards (table-, row-, column-wise), its DTensor part, or a replicated
    table's whole copy (data_parallel: a plain tensor on every rank). Views, to read or write."""
    shape = (int(value.size(0)), int(value.size(1)))
    if isinstance(value, ShardedTensor):
        with warnings.catch_warnings():  # ShardedTensor's deprecation, nothing a user can act on
            warnings.simplefilter("ignore", FutureWarning)
            shards = value.local_shards()
        blocks = [
            (int(s.metadata.shard_offsets[0]), int(s.metadata.shard_offsets[1]), s.tensor)
            for s in shards
        ]
    elif isinstance(value, DTensor):
        _, offsets = compute_local_shape_and_global_offset(
            value.shape, value.device_mesh, value.placements
        )
        blocks = [(int(offsets[0]), int(offsets[1]), value.to_local())]
    else:
        blocks = [(0, 0, value)]
    return TableShards(shape, blocks)


def local_shards(value: Any, env: DistEnv) -> TableShards:
    """The blocks of a table state entry this rank writes (`held_shards`), except that a
    replicated table is rank 0's alone to write. Views: nothing copied."""
    held = held_shards(value)
    if env.is_main or not _replicated(value):
        return held
    return TableShards(held.shape)


def _replicated(value: Any) -> bool:
    if isinstance(value, DTensor):
        return all(p.is_replicate() for p in value.placements)
    return not isinstance(value, ShardedTensor)


def export_group(env: DistEnv) -> ExportGroup:
    """All ranks, writing one export together (its staging folder named by rank 0's pid)."""
    if env.world_size == 1:
        return ExportGroup()
    token = str(broadcast_object(os.getpid(), env))
    return ExportGroup(env.rank, env.world_size, dist.barrier, token)
