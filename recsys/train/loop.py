"""One training epoch and one evaluation pass, read top to bottom."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from recsys.config import Schema, TrainerConfig
from recsys.data.batch import Batch
from recsys.data.loader import StreamingDataset, make_loader
from recsys.distributed.env import DistEnv, lockstep
from recsys.metrics import BinaryMetrics, MetricAccumulator

log = logging.getLogger(__name__)

MetricsSink = Callable[[dict[str, float], int], None]


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    samples: int = 0
    train_seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds else 0.0


class _Window:
    """Loss and sample sums since the last log step, kept on the device: adding to them
    never waits for the device; reading them (on log steps only) does."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.weight_sum = torch.zeros((), device=device)
        self.samples = 0
        self.started = time.perf_counter()


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: StreamingDataset,
    schema: Schema,
    trainer: TrainerConfig,
    env: DistEnv,
    state: TrainState,
    sink: MetricsSink,
) -> bool:
    """Train one epoch; returns False once trainer.max_steps is reached."""
    model.train()
    dataset.set_epoch(state.epoch)
    batches = lockstep(make_loader(dataset), Batch.padding(schema, trainer.batch_size), env)
    total = -(-dataset.num_rows // (trainer.batch_size * env.world_size))  # ceil: an estimate
    bar = tqdm(
        total=total,
        desc=f"epoch {state.epoch}",
        disable=not (env.is_main and trainer.progress_bar),
        leave=False,
    )
    window, started, real_rows = _Window(env.device), time.perf_counter(), 0
    for batch in batches:
        rows = batch.num_real_rows  # padding keeps ranks in step and trains nothing
        real_rows += rows
        batch = batch.to(env.device, non_blocking=True)
        loss, _ = model(batch)
        optimizer.zero_grad()
        loss.backward()  # the fused sparse optimizer updates embedding rows inside backward
        optimizer.step()
        state.step += 1
        weight = batch.weights.sum().detach()
        window.loss_sum += loss.detach() * weight
        window.weight_sum += weight
        window.samples += rows
        bar.update(1)
        if state.step % trainer.log_every_n_steps == 0:
            _log_window(window, env, state, sink, bar)
            window = _Window(env.device)
        if trainer.max_steps is not None and state.step >= trainer.max_steps:
            break
    bar.close()
    state.train_seconds += time.perf_counter() - started
    state.samples += int(_global_sum(torch.tensor(float(real_rows)), env).item())
    return trainer.max_steps is None or state.step < trainer.max_steps


def _log_window(
    window: _Window, env: DistEnv, state: TrainState, sink: MetricsSink, bar: tqdm
) -> None:
    # .item() is a host sync point: done only here, on log steps.
    sums = _global_sum(
        torch.stack(
            [
                window.loss_sum,
                window.weight_sum,
                torch.tensor(float(window.samples), device=window.loss_sum.device),
            ]
        ),
        env,
    )
    loss = (sums[0] / sums[1].clamp(min=1.0)).item()
    rate = sums[2].item() / max(time.perf_counter() - window.started, 1e-9)
    sink({"train/loss": loss, "train/samples_per_s": rate, "epoch": float(state.epoch)}, state.step)
    bar.set_postfix(loss=f"{loss:.4f}", rate=f"{rate:,.0f}/s")


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
