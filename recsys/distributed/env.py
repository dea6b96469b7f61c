"""Process-group setup: torchrun's environment, or a one-process group when run directly.

torchrun (single- or multi-node, c10d rendezvous) sets RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT; nothing here schedules processes. A plain `recsys-train` still needs a process
group because DistributedModelParallel does, so it gets a world of one over an in-memory store.
"""

from __future__ import annotations

import gc
import importlib
import os
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from recsys.config import ConfigError

T = TypeVar("T")
# torch modules that bind `dist.group.WORLD` as a default argument when first imported. torch
# imports them lazily (torch._dynamo pulls them in when the first optimizer is built), so they
# would be imported after init_process_group and bind the live default group: a reference that
# destroy_process_group cannot drop. The group, with gloo's worker and transport threads, would
# outlive the run into interpreter teardown, where a worker still releasing a finished
# collective's tensors wants the GIL, is ended by pthread_exit inside a noexcept destructor,
# and the process aborts ("terminate called without an active exception"). Imported before the
# group exists, they bind None.
_BIND_WORLD_ON_IMPORT = (
    "torch.distributed.nn.functional",
    "torch.distributed.optim.zero_redundancy_optimizer",
)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun), readable
    before the process group exists or after it is gone."""
    return int(os.environ.get("RANK", 0))


def init_distributed(device_name: str) -> DistEnv:
    """Join (or create) the process group: gloo on CPU, NCCL on GPU."""
    rank = launch_rank()
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = _device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        for module in _BIND_WORLD_ON_IMPORT:
            importlib.import_module(module)
        device_id = device if device.type == "cuda" else None
        if "MASTER_ADDR" in os.environ:  # torchrun (or the user) says where to rendezvous
            dist.init_process_group(backend, rank=rank, world_size=world_size, device_id=device_id)
        elif world_size == 1:
            # A world of one needs no network: an in-memory store, so back-to-back runs in
            # one process (sweeps, tests) never fight over a port.
            store = dist.HashStore()
            dist.init_process_group(backend, store=store, rank=0, world_size=1, device_id=device_id)
        else:
            raise ConfigError(
                f"WORLD_SIZE={world_size} but MASTER_ADDR is not set: launch with torchrun."
            )
    return DistEnv(rank, world_size, local_rank, device, backend)


def _device(name: str, local_rank: int) -> torch.device:
    """This rank's device for `trainer.device` (a `Device`; `recsys.train.validate` checks it,
    the CUDA check stays for callers that build a process group without validating)."""
    from recsys.config import Device

    if Device(name) is Device.cpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer=cpu.")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def shutdown_distributed() -> bool:
    """Destroy the process group. Returns whether the group is gone with it: gloo's worker and
    transport threads stop only when the last reference to the group does (`shutdown()` does
    not stop them), so a caller that still holds the sharded model keeps them running."""
    if not dist.is_initialized():
        return True
    group = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()
    if group() is not None:
        gc.collect()  # sharded modules hold the group, and some sit in reference cycles
    return group() is None


def lockstep(items: Iterable[T], padding: T, env: DistEnv) -> Iterator[T]:
    """Yield local items until every rank is exhausted, `padding` once this one is.

    Sharded lookups are collectives, so all ranks must run the same number of steps; a rank
    whose share of the data is smaller feeds weight-0 padding instead of hanging the others.
    This costs one tiny all-reduce per step (a host sync), only when world_size > 1.
    """
    iterator = iter(items)
    try:
        while True:
            item = next(iterator, None)
            if env.world_size > 1:
                alive = torch.tensor([int(item is not None)], device=env.device)
                dist.all_reduce(alive, op=dist.ReduceOp.MAX)
                if not alive.item():
                    return
            elif item is None:
                return
            yield item if item is not None else padding
    finally:  # closed early (max_steps, an error): stop the loader's thread or workers now
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
