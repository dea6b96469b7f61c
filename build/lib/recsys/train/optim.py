"""Dense optimizer and learning-rate schedule, from `TrainerConfig`.

The fused sparse optimizers live in `recsys.distributed.sharding` (they are fused into the
embedding backward). Values are checked by `recsys.train.validate` before a run starts. The
schedule is a pure function of the step, applied to every param
group of the combined optimizer: TorchRec's `EmbeddingFusedOptimizer` copies its group's lr
into the FBGEMM kernel on every `zero_grad()` / `step()`, so the sparse tables follow it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from recsys.config import DenseOptimizer, LRDecay, LRScheduleConfig, TrainerConfig

_INITIAL_LR = "initial_lr"  # the base lr of a param group, kept beside its current lr


def dense_optimizer_factory(
    trainer: TrainerConfig,
) -> Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]:
    """params -> the optimizer named by `trainer.optimizer` (KeyedOptimizerWrapper's input)."""
    lr, wd = trainer.lr, trainer.weight_decay
    betas = (float(trainer.betas[0]), float(trainer.betas[1]))
    factories = {
        DenseOptimizer.adamw: lambda p: torch.optim.AdamW(p, lr=lr, betas=betas, weight_decay=wd),
        DenseOptimizer.adam: lambda p: torch.optim.Adam(p, lr=lr, betas=betas, weight_decay=wd),
        DenseOptimizer.sgd: lambda p: torch.optim.SGD(
            p, lr=lr, momentum=trainer.momentum, weight_decay=wd
        ),
        DenseOptimizer.adagrad: lambda p: torch.optim.Adagrad(p, lr=lr, weight_decay=wd),
    }
    return factories[DenseOptimizer(trainer.optimizer)]


def lr_factor(step: int, schedule: LRScheduleConfig, total_steps: int) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based: the step about to run).

    Linear warmup from 1/(warmup+1) to 1 over `warmup_steps`, then decay over `decay_steps`
    (default: `total_steps - warmup_steps`) down to `min_lr_ratio`, where it stays.
    """
    warmup = schedule.warmup_steps
    if step < warmup:
        return (step + 1) / (warmup + 1)  # never 0: a step at lr 0 would be wasted
    floor = schedule.min_lr_ratio
    since = step - warmup
    if schedule.decay == LRDecay.step:
        return max(schedule.step_gamma ** (since // schedule.step_every), floor)
    if schedule.decay == LRDecay.none:
        return 1.0
    span = schedule.decay_steps or max(total_steps - warmup, 1)
    progress = min(since / span, 1.0)
    if schedule.decay == LRDecay.linear:
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


class LRScheduler:
    """Sets every param group's lr to its base lr x `lr_factor(step)` before each step."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, schedule: LRScheduleConfig, total_steps: int
    ):
        self.optimizer, self.schedule, self.total_steps = optimizer, schedule, total_steps
        for group in optimizer.param_groups:
            group.setdefault(_INITIAL_LR, float(group["lr"]))

    def apply(self, step: int) -> float:
        """Set the lrs for `step`; returns the factor. Call before the step's zero_grad."""
        factor = lr_factor(step, self.schedule, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group[_INITIAL_LR] * factor
        return factor

    def lrs(self) -> dict[str, float]:
        """The current lr of each leaf optimizer, for logging: lr/dense, lr/embedding_bags, ..."""
        return {f"lr/{name}": lr for name, lr in leaf_lrs(self.optimizer).items()}


def leaf_lrs(optimizer: torch.optim.Optimizer, key: str = "") -> dict[str, float]:
    """{name: lr} of every leaf of a (nested) TorchRec CombinedOptimizer.

    A leaf is named by the last part of its key ("model.sparse_arch.embedding_bags" ->
    "embedding_bags"); the dense KeyedOptimizerWrapper has no key and is called "dense".
    """
    subs = getattr(optimizer, "optimizers", None)
    if subs is None:
        name = key.rsplit(".", 1)[-1] if key else "dense"
        return {name: float(optimizer.param_groups[0]["lr"])}
    out: dict[str, float] = {}
    for sub_key, sub in subs:
        for name, lr in leaf_lrs(sub, sub_key or key).items():
            out[name if name not in out else f"{name}.{len(out)}"] = lr
    return out


def estimated_total_steps(
    num_rows: int, batch_size: int, world_size: int, epochs: int, max_steps: int | None
) -> int:
    """Steps the run will take, for schedules that decay over the whole run.

    An estimate: ranks read whole row groups, so the rank with the most rows sets the count.
    """
    per_epoch = max(-(-num_rows // (batch_size * world_size)), 1)
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps is not None else total
