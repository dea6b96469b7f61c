"""Intra-op threads chosen by timing steps (recsys.train.threads)."""

from __future__ import annotations

import pytest
import torch

from recsys.config import TrainerConfig
from recsys.train.threads import WARMUP_STEPS, ThreadChooser, candidate_threads


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _steps(chooser: ThreadChooser, n: int, seconds_at: dict[int, float]) -> list[int]:
    """Run n steps where a step at t threads takes seconds_at[t]; the threads each step had."""
    used = []
    for _ in range(n):
        chooser.before_step()
        used.append(torch.get_num_threads())
        chooser.record(seconds_at[used[-1]])
    return used


def test_keeps_the_faster_count_and_tries_again_when_load_changes() -> None:
    chooser = ThreadChooser((1, 2), trial_steps=4, recheck_every=10)
    trial = 2 * (WARMUP_STEPS + 4)
    used = _steps(chooser, trial, {1: 0.02, 2: 0.01})  # quiet machine: 2 threads win
    assert used == [1] * (trial // 2) + [2] * (trial // 2)
    assert chooser.chosen == 2 and _steps(chooser, 10, {1: 0.02, 2: 0.01}) == [2] * 10
    # Another process now keeps a core busy: 2 threads stall, the next trial goes back to 1.
    _steps(chooser, trial, {1: 0.02, 2: 0.5})
    assert chooser.chosen_after == [2, 1] and _steps(chooser, 3, {1: 0.02, 2: 0.5}) == [1] * 3


def test_warmup_steps_after_a_switch_are_not_timed() -> None:
    chooser = ThreadChooser((1, 2), trial_steps=2, recheck_every=100)
    slow_first = iter([9.0] * WARMUP_STEPS + [0.03, 0.03] + [0.01] * WARMUP_STEPS + [0.05, 0.05])
    for _ in range(2 * (WARMUP_STEPS + 2)):
        chooser.before_step()
        chooser.record(next(slow_first))
    assert chooser.chosen == 1  # 0.03 < 0.05: the 9 s warm-up steps did not count


def test_one_candidate_is_kept_without_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert candidate_threads(TrainerConfig()) == (torch.get_num_threads(),)
    chooser = ThreadChooser((3,), trial_steps=1, recheck_every=1)
    assert _steps(chooser, 5, {3: 0.1}) == [3] * 5 and chooser.chosen_after == []


def test_candidates_are_the_share_of_cores_with_and_without_the_loaders_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert candidate_threads(TrainerConfig()) == (3, 4)  # 4 cores each, one for the loader
    assert candidate_threads(TrainerConfig(num_workers=2)) == (2, 4)
