"""LR schedule shape (a pure function) and dense optimizer choice (errors: test_validate)."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.config import DenseOptimizer, LRDecay, LRScheduleConfig, TrainerConfig
from recsys.train.optim import (
    LRScheduler,
    dense_optimizer_factory,
    estimated_total_steps,
    leaf_lrs,
    lr_factor,
)


def _curve(schedule: LRScheduleConfig, total: int) -> list[float]:
    return [lr_factor(step, schedule, total) for step in range(total)]


def test_warmup_rises_linearly_then_holds_without_decay() -> None:
    curve = _curve(LRScheduleConfig(warmup_steps=4), 10)
    assert curve[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert curve[5:] == [1.0] * 5
    assert _curve(LRScheduleConfig(), 3) == [1.0, 1.0, 1.0]  # the default changes nothing


def test_linear_decay_reaches_the_floor_at_the_end_of_the_run() -> None:
    schedule = LRScheduleConfig(warmup_steps=2, decay="linear", min_lr_ratio=0.1)
    curve = _curve(schedule, 12)  # 10 decay steps after the warmup
    assert curve[2] == pytest.approx(1.0)
    assert curve[7] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a > b for a, b in zip(curve[2:], curve[3:], strict=False))
    assert lr_factor(12, schedule, 12) == pytest.approx(0.1)
    assert lr_factor(500, schedule, 12) == pytest.approx(0.1)  # stays at the floor


def test_cosine_decay_shape_and_explicit_decay_steps() -> None:
    schedule = LRScheduleConfig(decay="cosine", decay_steps=8, min_lr_ratio=0.0)
    curve = [lr_factor(s, schedule, total_steps=1000) for s in range(10)]
    expected = [0.5 * (1 + math.cos(math.pi * min(s / 8, 1.0))) for s in range(10)]
    assert curve == pytest.approx(expected)
    assert curve[4] == pytest.approx(0.5) and curve[8] == pytest.approx(0.0)


def test_step_decay_multiplies_by_gamma_and_respects_the_floor() -> None:
    schedule = LRScheduleConfig(decay="step", step_every=3, step_gamma=0.5, min_lr_ratio=0.2)
    assert _curve(schedule, 10) == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2])


def test_every_decay_has_a_shape() -> None:
    for decay in LRDecay:
        factor = lr_factor(5, LRScheduleConfig(decay=decay, step_every=2), total_steps=10)
        assert 0.0 <= factor <= 1.0, decay


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        (DenseOptimizer.adamw, torch.optim.AdamW),
        (DenseOptimizer.adam, torch.optim.Adam),
        (DenseOptimizer.sgd, torch.optim.SGD),
        ("adagrad", torch.optim.Adagrad),  # a plain string, as a config built in Python has it
    ],
)
def test_dense_optimizer_from_config(name: str, cls: type) -> None:
    trainer = TrainerConfig(optimizer=name, lr=0.03, weight_decay=0.01, momentum=0.9)
    opt = dense_optimizer_factory(trainer)([torch.nn.Parameter(torch.zeros(3))])
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.03 and group["weight_decay"] == 0.01
    if name == "sgd":
        assert group["momentum"] == 0.9
    if name.startswith("adam"):
        assert group["betas"] == (0.9, 0.999)


def test_scheduler_scales_every_group_from_its_own_base_lr() -> None:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 1.0}])
    scheduler = LRScheduler(opt, LRScheduleConfig(warmup_steps=1, decay="linear"), total_steps=5)
    assert scheduler.apply(0) == pytest.approx(0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.5])
    scheduler.apply(3)  # 2 of 4 decay steps done
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.5])
    scheduler.apply(1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 1.0])
    assert leaf_lrs(opt) == {"dense": pytest.approx(0.1)}


def test_estimated_total_steps() -> None:
    assert estimated_total_steps(1000, 128, 1, epochs=3, max_steps=None) == 8 * 3
    assert estimated_total_steps(1000, 128, 2, epochs=3, max_steps=None) == 4 * 3
    assert estimated_total_steps(1000, 128, 1, epochs=3, max_steps=10) == 10
