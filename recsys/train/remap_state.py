"""A managed table's remap in a model's state dict: which entries it holds, and taking rows
back from ids that expired.

Managed tables (`hashing: managed`) carry their remap (which id holds which row, the eviction
counts, the step counter) as state entries beside their weights: warm start copies them whole
from a checkpoint (recsys.train.warm_start). `expire` (train-days' `expire_after_days`,
`trainer.warm_start_expire`) then takes rows back from ids not seen for days: each such id
leaves the remap (its slot empty, its counts zero) and its row and bias row are zeroed; the row
is free for the next new id (whose assignment re-initializes it and its optimizer state,
`recsys.distributed.sharding._CpuManagedCollection._evict`). This lives apart from warm start
because it edits remap state in place, whatever the state was copied from.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor

from recsys.model.layout import REMAP_EMPTY_SLOT, WeightLayout
from recsys.train.checkpoint_layout import CheckpointError


def load_expiry(path: str | None) -> dict[str, np.ndarray] | None:
    """`trainer.warm_start_expire`: managed table -> hashed ids losing their rows (an .npz)."""
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as ids:
        return {table: ids[table].astype(np.int64) for table in ids.files}


def remap_state_keys(state: dict[str, Any], layout: WeightLayout, table: str) -> list[str]:
    """Every state entry of a managed table's remap module (ids, rows, eviction counts, step
    counter): the entries beside the ids the layout names."""
    module = layout.remaps[table].ids.rpartition(".")[0] + "."
    return [k for k in state if k.startswith(module)]


def _local_parts(value: Any) -> list[tuple[int, torch.Tensor]]:
    """(first row, tensor) of every part of `value` this rank holds (a plain tensor: all)."""
    if isinstance(value, ShardedTensor):
        with warnings.catch_warnings():  # DCP's ShardedTensor deprecation: nothing to act on
            warnings.simplefilter("ignore", FutureWarning)
            shards = value.local_shards()
        return [(int(s.metadata.shard_offsets[0]), s.tensor) for s in shards]
    if isinstance(value, DTensor):
        raise CheckpointError("expiring managed ids of a DTensor remap is not supported")
    return [(0, value)]


@torch.no_grad()
def expire_ids(state: dict[str, Any], layout: WeightLayout, table: str, ids: np.ndarray) -> int:
    """Take rows back from `ids` (hashed, pre-remap) in a managed table's remap state, in place.

    Each remap part (one per row shard, sorted by id, its last slot the fallback) loses the
    ids: their slots become empty (int64 max, counts 0) and move to the end of the part's
    sorted ids, before the fallback slot (a stable sort keeps it last). Their rows (and bias
    rows) are zeroed. Returns how many ids this rank's parts took rows back from.
    """
    keys = layout.remaps[table]
    module = keys.ids.rpartition(".")[0] + "."
    metadata = [
        k
        for k in remap_state_keys(state, layout, table)
        if k.startswith(module + "_mch_") and k not in (keys.ids, keys.rows)
    ]
    wanted = torch.from_numpy(np.unique(np.asarray(ids, dtype=np.int64)))
    freed_rows: list[torch.Tensor] = []
    parts = zip(
        _local_parts(state[keys.ids]),
        _local_parts(state[keys.rows]),
        *[_local_parts(state[k]) for k in metadata],
        strict=True,
    )
    for (_, slot_ids), (_, slot_rows), *meta in parts:
        gone = torch.isin(slot_ids, wanted) & (slot_ids != REMAP_EMPTY_SLOT)
        if not bool(gone.any()):
            continue
        freed_rows.append(slot_rows[gone].clone())
        slot_ids[gone] = REMAP_EMPTY_SLOT
        for _, counts in meta:
            counts[gone] = 0
        order = torch.sort(slot_ids, stable=True).indices
        for tensor in (slot_ids, slot_rows, *(m for _, m in meta)):
            tensor.copy_(tensor[order])
    rows = torch.cat(freed_rows) if freed_rows else torch.empty(0, dtype=torch.int64)
    for key in (layout.tables[table], layout.first_order.get(table)):
        if key is not None:
            _zero_rows(state[key], rows)
    return int(rows.numel())


def _zero_rows(weight: Any, rows: torch.Tensor) -> None:
    """Zero the given global rows of a table in the parts this rank holds."""
    for start, part in _local_parts(weight):
        local = rows[(rows >= start) & (rows < start + part.shape[0])] - start
        part[local] = 0
