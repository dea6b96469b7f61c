"""How one optimizer step runs: a plain loop, or TorchRec's TrainPipelineSparseDist.

The pipeline overlaps the input dist (the all-to-all that sends every id to the rank holding
its table) of batch i+1 with the forward and backward of batch i, and on GPU the host-to-device
copy of batch i+2 as well. It pulls batches ahead of the step it runs, so the loop learns which
batch a step trained from `TakenBatches`, a FIFO of what was pulled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol

import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from recsys.data.batch import Batch

StepOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # loss, logits, labels (detached)


class TakenBatches(Iterator[Batch]):
    """Yields the loader's batches and remembers them until their step has completed."""

    def __init__(self, batches: Iterable[Batch], pin_memory: bool = False):
        self._batches = iter(batches)
        self._pin = pin_memory
        self._pending: deque[Batch] = deque()
        self.real_rows = 0  # rows of the batches whose step completed

    def __next__(self) -> Batch:
        batch = next(self._batches)
        self._pending.append(batch)
        # Page-locked memory lets the copy to the GPU run on its own stream, not block.
        return batch.pin_memory() if self._pin else batch

    def close(self) -> None:
        """Stop the source (a generator's read-ahead thread, loader workers) now, not at
        garbage collection: an epoch left early must not leave threads behind."""
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
        self._pending.clear()

    def completed(self) -> Batch:
        """The oldest batch pulled and not yet handed out: the one the last step trained."""
        batch = self._pending.popleft()
        self.real_rows += batch.num_real_rows
        return batch


class Stepper(Protocol):
    def step(self, batches: Iterator[Batch]) -> StepOutput: ...

    def paused(self) -> AbstractContextManager: ...

    def close(self) -> None: ...


class PlainStepper:
    """Copy, forward, backward, step; the fused sparse optimizer updates rows in backward."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.model, self.optimizer, self.device = model, optimizer, device

    def step(self, batches: Iterator[Batch]) -> StepOutput:
        batch = next(batches).to(self.device, non_blocking=True)
        # zero_grad also hands the scheduled lr to the fused FBGEMM kernels (before backward).
        self.optimizer.zero_grad()
        loss, (_, logits, labels) = self.model(batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits, labels

    def paused(self) -> AbstractContextManager:
        return nullcontext()

    def close(self) -> None:
        pass


class PipelinedStepper:
    """TrainPipelineSparseDist over the loader's batches (it runs on CPU as well as GPU)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.pipeline = TrainPipelineSparseDist(model, optimizer, device, execute_all_batches=True)

    def step(self, batches: Iterator[Batch]) -> StepOutput:
        loss, logits, labels = self.pipeline.progress(batches)
        return loss, logits, labels

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Original forwards back for an evaluation mid-epoch; the prefetched batches wait."""
        self.pipeline.detach()
        try:
            yield
        finally:
            self.pipeline.attach()

    def close(self) -> None:
        # Restores the sharded modules' own forwards; batches still in flight are dropped.
        self.pipeline.detach()


def make_stepper(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    pipeline: bool | None,
    world_size: int,
) -> Stepper:
    """`pipeline`: trainer.pipeline; None chooses by `uses_pipeline`."""
    if pipeline is None:
        pipeline = uses_pipeline(device, world_size)
    cls = PipelinedStepper if pipeline else PlainStepper
    return cls(model, optimizer, device)


def uses_pipeline(device: torch.device, world_size: int) -> bool:
    """Whether trainer.pipeline=null runs the pipeline: where it has something to overlap,
    an input dist across processes or copies to a GPU. One CPU process has neither, and
    there the pipeline's own per-step work cost 8-10% of the samples/s (Criteo layout,
    batch 512, 1 and 2 threads, paired in one process)."""
    return world_size > 1 or device.type != "cpu"
