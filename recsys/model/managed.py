"""Managed collisions: TorchRec's MCH remap in front of the managed tables' lookups.

A managed table (`data.tables.<t>.hashing: managed`) holds num_buckets rows. Its ids arrive
hashed into [0, input_hash_size) (32-bit mmh3 by default), and TorchRec's
`MCHManagedCollisionModule` maps each to a row: the ids holding a row keep it in a sorted array
(`_mch_sorted_raw_ids`, with their rows in `_mch_remapped_ids_mapping`, both buffers saved in
checkpoints); any other id reads the fallback row, the last row of the table (of each row shard
once sharded). Every `eviction_interval` training steps the ids seen in those steps are counted
(over all ranks: each id travels to the rank owning its input range) and compete with the
holders under the eviction policy; `admit_after` drops ids seen fewer times in that window
before they compete (TorchRec's `threshold_filtering_func`).

The remap runs inside a `ManagedCollisionEmbeddingBagCollection` (the managed tables only:
TorchRec's MCC cannot share a feature between two tables), which also returns the remapped ids
so the tables' first-order biases are read with the very same rows (`SparseArch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHEvictionPolicy,
    MCHManagedCollisionModule,
)

from recsys.config import ManagedEviction
from recsys.schema import ResolvedManaged

_POLICIES: dict[ManagedEviction, type[MCHEvictionPolicy]] = {
    ManagedEviction.lfu: LFU_EvictionPolicy,
    ManagedEviction.lru: LRU_EvictionPolicy,
    ManagedEviction.distance_lfu: DistanceLFU_EvictionPolicy,
}
# Buffers of an MCH module that make up the remap: ids holding a row (sorted), and their rows.
REMAP_IDS, REMAP_ROWS = "_mch_sorted_raw_ids", "_mch_remapped_ids_mapping"


@dataclass(frozen=True)
class AdmitAfter:
    """TorchRec threshold filter: an id competes for a row once counted `times` times in the
    window. Returns (mask of ids kept, threshold: counts <= it are dropped)."""

    times: int

    @torch.no_grad()
    def __call__(self, counts: torch.Tensor) -> tuple[torch.Tensor, int]:
        return counts >= self.times, self.times - 1


def remap_module(
    config: EmbeddingBagConfig, options: ResolvedManaged, device: torch.device | None
) -> MCHManagedCollisionModule:
    """The MCH remap of one managed table (one bucket of the input range: the sharder
    splits it over row shards, `recsys.distributed.sharding`)."""
    admit = AdmitAfter(options.admit_after) if options.admit_after > 1 else None
    return MCHManagedCollisionModule(
        zch_size=config.num_embeddings,
        device=device or torch.device("cpu"),
        eviction_policy=_POLICIES[options.eviction](threshold_filtering_func=admit),
        eviction_interval=options.eviction_interval,
        input_hash_size=options.input_hash_size,
        name=config.name,
    )


def managed_collection(
    configs: list[EmbeddingBagConfig],
    options: dict[str, ResolvedManaged],
    device: torch.device | None,
    return_remapped: bool,
) -> ManagedCollisionEmbeddingBagCollection:
    """The managed tables behind their remaps; with `return_remapped`, forward also returns
    the remapped ids (a KJT of rows, same keys and lengths)."""
    remaps = {c.name: remap_module(c, options[c.name], device) for c in configs}
    return ManagedCollisionEmbeddingBagCollection(
        EmbeddingBagCollection(tables=configs, device=device),
        ManagedCollisionCollection(remaps, configs),
        return_remapped_features=return_remapped,
    )


def remap_modules(collection: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Table -> its MCH module, in an unsharded or sharded managed collection."""
    return dict(collection._managed_collision_collection._managed_collision_modules.items())
