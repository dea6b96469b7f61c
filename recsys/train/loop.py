"""One training epoch, read top to bottom: an iterator that yields after every step.

The recipe iterates an `Epoch` and does what falls between steps (a mid-run evaluation, a
checkpoint, stopping early) itself, so the loop holds no callbacks:

    with Epoch(job, dataset, state) as epoch:  # leaving it stops the pipeline and loader
        for report in epoch:
            log(report.metrics)                  # train/* on log steps, else empty
            if evaluation_due:
                with epoch.paused(): evaluate()  # a train pipeline hands the model back
    log(epoch.end())                             # rows trained and skipped, over all ranks

Time spent by the caller between steps is not training time: the epoch's clock runs only
while it trains.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from recsys.config import TrainerConfig
from recsys.data.batch import Batch
from recsys.data.loader import StreamingDataset, make_loader
from recsys.data.progress import EpochProgress
from recsys.distributed.env import DistEnv, lockstep
from recsys.distributed.gather import gather_objects
from recsys.metrics import BinaryMetrics, MetricAccumulator
from recsys.schema import Schema
from recsys.train.allocator import keep_freed_memory
from recsys.train.optim import LRScheduler
from recsys.train.steppers import TakenBatches, make_stepper
from recsys.train.threads import GIL_SWITCH_SECONDS, ThreadChooser, chooser_for

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training stands.

    `progress` holds exactly the batches trained so far this epoch (never the ones a train
    pipeline has prefetched), so a checkpoint taken between steps resumes at the right row.
    """

    step: int = 0
    epoch: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    progress: EpochProgress | None = None  # None until the first epoch starts

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds else 0.0


@dataclass
class TrainJob:
    """What the loop trains with: the sharded train model, its optimizer and the settings."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schema: Schema
    trainer: TrainerConfig
    env: DistEnv
    scheduler: LRScheduler | None = None
    # Intra-op threads and the loader's read-ahead, chosen by timing steps; kept across
    # epochs (recsys.train.threads).
    threads: ThreadChooser | None = None

    def thread_chooser(self, dataset: StreamingDataset) -> ThreadChooser:
        if self.threads is None:
            self.threads = chooser_for(self.trainer, dataset.batches_per_block)
        return self.threads

    def reached_max_steps(self, state: TrainState) -> bool:
        return self.trainer.max_steps is not None and state.step >= self.trainer.max_steps


@dataclass
class StepReport:
    """One completed step: its batch, and the train/* metrics when it was a log step."""

    state: TrainState
    batch: Batch
    metrics: dict[str, float]


class _Window:
    """Sums since the last log step. The loss sum stays on the device: adding to it never
    waits for the device; reading it (on log steps only) does."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.weight_sum = 0.0
        self.samples = 0
        self.seconds = 0.0
        self.logits: list[torch.Tensor] = []
        self.batches: list[Batch] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, batch: Batch) -> None:
        weight = float(batch.weights.sum())  # host tensor: no device sync
        self.loss_sum += loss.detach() * weight
        self.weight_sum += weight
        self.samples += batch.num_real_rows
        self.logits.append(logits.detach())
        self.batches.append(batch)


class Epoch:
    """Trains one epoch of `dataset`, one step per iteration, until the data runs out on
    every rank or `trainer.max_steps` is reached. Leaving the iteration early (a `break`)
    ends the epoch there. Used as a context manager, whose exit stops the train pipeline and
    the loader (its read-ahead thread or worker processes) however the epoch ended.

    `resume` (an EpochProgress of this epoch) trains only the rows it has not recorded.
    """

    def __init__(
        self,
        job: TrainJob,
        dataset: StreamingDataset,
        state: TrainState,
        resume: EpochProgress | None = None,
    ):
        self.job, self.dataset, self.state = job, dataset, state
        self._resume = resume
        self._stepper = make_stepper(
            job.model, job.optimizer, job.env.device, job.trainer.pipeline, job.env.world_size
        )
        self._taken = TakenBatches(iter(()))
        self._steps: Iterator[StepReport] | None = None
        self._released = False

    def __enter__(self) -> Epoch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the pipeline and the loader now (also when iteration was left early)."""
        if self._steps is not None:
            self._steps.close()  # runs the generator's cleanup if it is suspended mid-epoch
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._stepper.close()
            self._taken.close()

    def paused(self) -> AbstractContextManager:
        """Give the model its own forwards back (for an evaluation between steps)."""
        return self._stepper.paused()

    def __iter__(self) -> Iterator[StepReport]:
        self._steps = self._run()
        return self._steps

    def end(self) -> dict[str, float]:
        """After the last step: count the epoch's rows into the state and return the rows
        trained and skipped as bad (by reason), summed over ranks, so a shortened epoch is
        visible (`data.on_bad_row=skip` drops rows, never silently). A collective."""
        self.close()
        env = self.job.env
        rows = torch.tensor(float(self._taken.real_rows), device=env.device)
        self.state.samples += int(_global_sum(rows, env).item())
        merged = EpochProgress.merge(gather_objects(self.state.progress, env))
        metrics = {"data/rows_trained": float(merged.rows)}
        metrics["data/bad_rows"] = float(sum(merged.bad_rows.values()))
        metrics["data/rows_padded"] = float(merged.rows_padded)  # short lines, not skipped
        return metrics | {f"data/bad_rows/{r}": float(n) for r, n in merged.bad_rows.items()}

    def _run(self) -> Iterator[StepReport]:
        job, state = self.job, self.state
        job.model.train()
        threads, switch = torch.get_num_threads(), sys.getswitchinterval()
        chooser = job.thread_chooser(self.dataset)
        sys.setswitchinterval(GIL_SWITCH_SECONDS)  # the loader thread yields the GIL sooner
        keep_freed_memory()  # process-wide, once: per-step buffers stay mapped
        self._start()
        self._taken = taken = TakenBatches(self._batches(), _pins(job.trainer, job.env))
        bar = _progress_bar(self.dataset, job.trainer, job.env, state)
        window = _Window(job.env.device)
        try:
            while not job.reached_max_steps(state):
                chooser.before_step()
                started = time.perf_counter()
                if job.scheduler is not None:
                    job.scheduler.apply(state.step)  # before the step: the fused kernels read it
                batch = self._step(taken, window)
                if batch is None:
                    break
                seconds = time.perf_counter() - started
                chooser.record(seconds)
                window.seconds += seconds
                metrics = {}
                if state.step % job.trainer.log_every_n_steps == 0:
                    metrics = _window_metrics(window, job, state, bar)
                    window = _Window(job.env.device)
                state.train_seconds += time.perf_counter() - started
                bar.update(1)
                yield StepReport(state, batch, metrics)
        finally:
            bar.close()
            self._release()
            torch.set_num_threads(threads)
            sys.setswitchinterval(switch)

    def _start(self) -> None:
        state, resume = self.state, self._resume
        if resume is not None:
            self.dataset.set_epoch(state.epoch, resume=resume)
            state.progress = resume
            return
        self.dataset.set_epoch(state.epoch)
        state.progress = self.dataset.new_progress()

    def _batches(self) -> Iterator[Batch]:
        padding = Batch.padding(self.job.schema, self.job.trainer.batch_size)
        switch = self.job.thread_chooser(self.dataset).switch
        return lockstep(make_loader(self.dataset, switch), padding, self.job.env)

    def _step(self, taken: TakenBatches, window: _Window) -> Batch | None:
        """One optimizer step; None when the data is exhausted on every rank."""
        try:
            loss, logits, _ = self._stepper.step(taken)
        except StopIteration:
            return None
        batch = taken.completed()  # the batch this step trained (a pipeline holds later ones)
        self.state.step += 1
        self.state.progress.record(batch)
        window.add(loss, logits, batch)
        return batch


def _pins(trainer: TrainerConfig, env: DistEnv) -> bool:
    return trainer.pin_memory and env.device.type == "cuda"


class _Bar(tqdm):
    # No monitor thread: tqdm starts one with the first bar (even a disabled one) and never
    # stops it, so it would outlive the run. It only retunes `miniters` of stalled bars.
    monitor_interval = 0


def _progress_bar(
    dataset: StreamingDataset, trainer: TrainerConfig, env: DistEnv, state: TrainState
) -> tqdm:
    total = -(-dataset.num_rows // (trainer.batch_size * env.world_size))  # ceil: an estimate
    return _Bar(
        total=total,
        desc=f"epoch {state.epoch}",
        disable=not (env.is_main and trainer.progress_bar),
        leave=False,
    )


def _window_metrics(
    window: _Window, job: TrainJob, state: TrainState, bar: tqdm
) -> dict[str, float]:
    # .item() and the metric gather are host sync points: done only here, on log steps.
    device = window.loss_sum.device
    sums = _global_sum(
        torch.stack(
            [
                window.loss_sum,
                torch.tensor(window.weight_sum, device=device),
                torch.tensor(float(window.samples), device=device),
            ]
        ),
        job.env,
    )
    loss = (sums[0] / sums[1].clamp(min=1.0)).item()
    rate = sums[2].item() / max(window.seconds, 1e-9)
    metrics = {"train/loss": loss, "train/samples_per_s": rate, "epoch": float(state.epoch)}
    metrics |= _classification_metrics(window).as_dict(prefix="train/")
    metrics.pop("train/num_examples")
    if job.scheduler is not None:
        metrics |= job.scheduler.lrs()
    bar.set_postfix(loss=f"{loss:.4f}", rate=f"{rate:,.0f}/s")
    return metrics


def _classification_metrics(window: _Window) -> BinaryMetrics:
    """AUC, NE, calibration, CTR over the window's rows of every rank (a collective)."""
    accumulator = MetricAccumulator()
    for logits, batch in zip(window.logits, window.batches, strict=True):
        accumulator.update(batch.labels, torch.sigmoid(logits.float()), batch.weights)
    return accumulator.compute()


def _global_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world_size > 1:
        values = values.to(env.device)
        dist.all_reduce(values)
    return values.cpu()


__all__ = ["Epoch", "StepReport", "TrainJob", "TrainState"]
