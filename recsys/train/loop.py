"""One training epoch and one evaluation pass, read top to bottom."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from recsys.config import Schema, TrainerConfig
from recsys.data.batch import Batch
from recsys.data.loader import StreamingDataset, make_loader
from recsys.data.progress import EpochProgress
from recsys.distributed.env import DistEnv, gather_objects, lockstep
from recsys.metrics import BinaryMetrics, MetricAccumulator
from recsys.train.optim import LRScheduler
from recsys.train.steppers import Stepper, TakenBatches, make_stepper

log = logging.getLogger(__name__)

MetricsSink = Callable[[dict[str, float], int], None]


@dataclass
class TrainState:
    """Where training stands; what `after_step` hooks see after every completed step.

    `progress` holds exactly the batches trained so far this epoch (never the ones a train
    pipeline has prefetched), so a checkpoint taken in a hook resumes at the right row.
    A hook may set `stop_reason` to end training after this step (early stopping does), and
    must wrap any forward pass of its own in `with state.paused():` (a train pipeline has
    rewritten the sharded modules' forwards for its own batches until then).
    """

    step: int = 0
    epoch: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    progress: EpochProgress | None = None  # None until the first epoch starts
    stop_reason: str | None = None
    paused: Callable[[], AbstractContextManager] = field(default=nullcontext, repr=False)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds else 0.0


class _Window:
    """Sums since the last log step. The loss sum stays on the device: adding to it never
    waits for the device; reading it (on log steps only) does."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.weight_sum = 0.0
        self.samples = 0
        self.started = time.perf_counter()
        self.logits: list[torch.Tensor] = []
        self.batches: list[Batch] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, batch: Batch) -> None:
        weight = float(batch.weights.sum())  # host tensor: no device sync
        self.loss_sum += loss.detach() * weight
        self.weight_sum += weight
        self.samples += batch.num_real_rows
        self.logits.append(logits.detach())
        self.batches.append(batch)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: StreamingDataset,
    schema: Schema,
    trainer: TrainerConfig,
    env: DistEnv,
    state: TrainState,
    sink: MetricsSink,
    after_step: Callable[[TrainState], None] | None = None,
    scheduler: LRScheduler | None = None,
    resume: EpochProgress | None = None,
) -> bool:
    """Train one epoch; returns False once training should end (max_steps or a hook's stop).

    `resume` (an EpochProgress of this epoch) trains only the rows it has not recorded.
    """
    model.train()
    _start_epoch(dataset, state, resume)
    padding = Batch.padding(schema, trainer.batch_size)
    taken = TakenBatches(lockstep(make_loader(dataset), padding, env), _pins(trainer, env))
    stepper = make_stepper(model, optimizer, env.device, trainer.pipeline)
    state.paused = stepper.paused
    bar = _progress_bar(dataset, trainer, env, state)
    window, started, hook_seconds = _Window(env.device), time.perf_counter(), 0.0
    try:
        while not _reached_max_steps(state, trainer) and state.stop_reason is None:
            if scheduler is not None:
                scheduler.apply(state.step)  # before the step: the fused kernels read it
            if not _train_step(stepper, taken, window, state):
                break
            bar.update(1)
            if state.step % trainer.log_every_n_steps == 0:
                _log_window(window, env, state, sink, bar, scheduler)
                window = _Window(env.device)
            hook_seconds += _run_hook(after_step, state, window)
    finally:
        stepper.close()
        state.paused = nullcontext
        bar.close()
    state.train_seconds += time.perf_counter() - started - hook_seconds
    rows = torch.tensor(float(taken.real_rows), device=env.device)
    state.samples += int(_global_sum(rows, env).item())
    _log_epoch_data(state, env, sink)
    return not _reached_max_steps(state, trainer) and state.stop_reason is None


def _log_epoch_data(state: TrainState, env: DistEnv, sink: MetricsSink) -> None:
    """Rows trained and rows skipped as bad (by reason) this epoch, summed over ranks, so a
    shortened epoch is visible in MLflow (`data.on_bad_row=skip` drops rows, never silently)."""
    if state.progress is None:
        return
    merged = EpochProgress.merge(gather_objects(state.progress, env))
    metrics = {"data/rows_trained": float(merged.rows)}
    metrics["data/bad_rows"] = float(sum(merged.bad_rows.values()))
    metrics |= {f"data/bad_rows/{reason}": float(n) for reason, n in merged.bad_rows.items()}
    sink(metrics, state.step)


def _start_epoch(
    dataset: StreamingDataset, state: TrainState, resume: EpochProgress | None
) -> None:
    if resume is not None:
        dataset.set_epoch(state.epoch, resume=resume)
        state.progress = resume
        return
    dataset.set_epoch(state.epoch)
    state.progress = dataset.new_progress()


def _train_step(stepper: Stepper, taken: TakenBatches, window: _Window, state: TrainState) -> bool:
    """One optimizer step; False when the data is exhausted on every rank."""
    try:
        loss, logits, _ = stepper.step(taken)
    except StopIteration:
        return False
    batch = taken.completed()  # the batch this step trained (a pipeline holds later ones)
    state.step += 1
    state.progress.record(batch)
    window.add(loss, logits, batch)
    return True


def _run_hook(
    after_step: Callable[[TrainState], None] | None, state: TrainState, window: _Window
) -> float:
    """Call the hook; its time (an evaluation, a checkpoint) is not training time."""
    if after_step is None:
        return 0.0
    started = time.perf_counter()
    after_step(state)
    spent = time.perf_counter() - started
    window.started += spent
    return spent


def _reached_max_steps(state: TrainState, trainer: TrainerConfig) -> bool:
    return trainer.max_steps is not None and state.step >= trainer.max_steps


def _pins(trainer: TrainerConfig, env: DistEnv) -> bool:
    return trainer.pin_memory and env.device.type == "cuda"


def _progress_bar(
    dataset: StreamingDataset, trainer: TrainerConfig, env: DistEnv, state: TrainState
) -> tqdm:
    total = -(-dataset.num_rows // (trainer.batch_size * env.world_size))  # ceil: an estimate
    return tqdm(
        total=total,
        desc=f"epoch {state.epoch}",
        disable=not (env.is_main and trainer.progress_bar),
        leave=False,
    )


def _log_window(
    window: _Window,
    env: DistEnv,
    state: TrainState,
    sink: MetricsSink,
    bar: tqdm,
    scheduler: LRScheduler | None,
) -> None:
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
        env,
    )
    loss = (sums[0] / sums[1].clamp(min=1.0)).item()
    rate = sums[2].item() / max(time.perf_counter() - window.started, 1e-9)
    metrics = {"train/loss": loss, "train/samples_per_s": rate, "epoch": float(state.epoch)}
    metrics |= _window_metrics(window).as_dict(prefix="train/")
    metrics.pop("train/num_examples")
    if scheduler is not None:
        metrics |= scheduler.lrs()
    sink(metrics, state.step)
    bar.set_postfix(loss=f"{loss:.4f}", rate=f"{rate:,.0f}/s")


def _window_metrics(window: _Window) -> BinaryMetrics:
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


@dataclass
class Evaluation:
    metrics: BinaryMetrics
    row_ids: np.ndarray | None  # rank 0 only: every eval row's id ...
    probs: np.ndarray | None  # ... and predicted click probability, sorted by row id


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: StreamingDataset, schema: Schema, env: DistEnv
) -> Evaluation:
    """Exact metrics over every eval row of every rank; predictions gathered on rank 0."""
    model.eval()
    accumulator = MetricAccumulator()
    row_ids, probs = [], []
    padding = Batch.padding(schema, dataset.options.batch_size)
    for batch in lockstep(make_loader(dataset), padding, env):
        batch = batch.to(env.device, non_blocking=True)
        _, (_, logits, labels) = model(batch)
        p = torch.sigmoid(logits.float()).cpu()
        accumulator.update(labels.cpu(), p, batch.weights.cpu())
        real = batch.real_rows.cpu()
        row_ids.append(batch.row_ids.cpu()[real].numpy())
        probs.append(p[real].numpy())
    metrics = accumulator.compute()
    ids, ps = _gather_predictions(
        np.concatenate(row_ids or [np.zeros(0, np.int64)]),
        np.concatenate(probs or [np.zeros(0, np.float32)]),
        env,
    )
    model.train()
    return Evaluation(metrics, ids, ps)


def _gather_predictions(
    row_ids: np.ndarray, probs: np.ndarray, env: DistEnv
) -> tuple[np.ndarray | None, np.ndarray | None]:
    parts = [(row_ids, probs)]
    if env.world_size > 1:
        parts = [None] * env.world_size if env.is_main else None
        dist.gather_object((row_ids, probs), parts, dst=0)
    if not env.is_main:
        return None, None
    ids = np.concatenate([p[0] for p in parts])
    ps = np.concatenate([p[1] for p in parts])
    order = np.argsort(ids, kind="stable")
    return ids[order], ps[order]


__all__ = ["Evaluation", "TrainState", "evaluate", "train_epoch"]
