"""Intra-op threads chosen by timing steps (recsys.train.threads)."""

from __future__ import annotations

import pytest
import torch

from recsys.config import TrainerConfig
from recsys.train.threads import (
    ABANDON_RATIO,
    TRIAL_STEPS,
    WARMUP_STEPS,
    Candidate,
    ThreadChooser,
    candidates_for,
    trial_steps,
)

ONE, TWO = Candidate(1), Candidate(2, read_ahead=False)


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _steps(chooser: ThreadChooser, n: int, seconds_at: dict[int, float]) -> list[int]:
    """Run n steps where a step at t threads takes seconds_at[t]; the threads each step had.
    The loader's switch must say what the candidate says."""
    used = []
    for _ in range(n):
        chooser.before_step()
        used.append(torch.get_num_threads())
        assert chooser.switch.read_ahead == chooser.current.read_ahead
        chooser.record(seconds_at[used[-1]])
    return used


def test_keeps_the_faster_count_and_tries_again_when_load_changes() -> None:
    chooser = ThreadChooser((ONE, TWO), trial_steps=4, recheck_every=10)
    trial = 2 * (WARMUP_STEPS + 4)
    used = _steps(chooser, trial, {1: 0.02, 2: 0.01})  # quiet machine: 2 threads win
    assert used == [1] * (trial // 2) + [2] * (trial // 2)
    assert chooser.chosen == TWO and _steps(chooser, 10, {1: 0.02, 2: 0.01}) == [2] * 10
    assert not chooser.switch.read_ahead  # every core trains: batches are made inline
    # Another process now keeps a core busy: 2 threads stall, the next trial goes back to 1.
    _steps(chooser, trial, {1: 0.02, 2: 0.5})
    assert chooser.chosen_after == [TWO, ONE] and _steps(chooser, 3, {1: 0.02, 2: 0.5}) == [1] * 3
    assert chooser.switch.read_ahead


def test_warmup_steps_after_a_switch_are_not_timed() -> None:
    chooser = ThreadChooser((ONE, TWO), trial_steps=2, recheck_every=100)
    slow_first = iter([9.0] * WARMUP_STEPS + [0.03, 0.03] + [0.01] * WARMUP_STEPS + [0.05, 0.05])
    for _ in range(2 * (WARMUP_STEPS + 2)):
        chooser.before_step()
        chooser.record(next(slow_first))
    assert chooser.chosen == ONE  # 0.03 < 0.05: the 9 s warm-up steps did not count


def test_a_block_read_inline_counts_in_full() -> None:
    # Inline, the first step of each block of 4 batches also reads the block (0.05 s): with
    # 2 threads a step computes in 0.01 s, 0.0225 s on average with the reading; 1 thread,
    # reading ahead, takes 0.02. A median (0.01) would have picked 2 threads.
    chooser = ThreadChooser((ONE, TWO), trial_steps=4, recheck_every=100)
    inline = iter([0.06, 0.01, 0.01, 0.01] * 3)
    for _ in range(2 * (WARMUP_STEPS + 4)):
        chooser.before_step()
        chooser.record(0.02 if chooser.current == ONE else next(inline))
    assert chooser.chosen == ONE


def test_a_far_slower_candidate_ends_its_long_trial_early() -> None:
    chooser = ThreadChooser((ONE, TWO), trial_steps=64, recheck_every=100)
    used = _steps(chooser, WARMUP_STEPS + 64, {1: 0.01, 2: ABANDON_RATIO * 0.011})
    used += _steps(chooser, WARMUP_STEPS + TRIAL_STEPS, {1: 0.01, 2: ABANDON_RATIO * 0.011})
    assert used.count(2) == WARMUP_STEPS + TRIAL_STEPS  # not 64: 2 threads stalled
    assert chooser.chosen_after == [ONE]
    # Slower, but not by that much (a block read inline on one step): the whole trial runs.
    chooser = ThreadChooser((ONE, TWO), trial_steps=64, recheck_every=100)
    used = _steps(chooser, 2 * (WARMUP_STEPS + 64), {1: 0.01, 2: 0.02})
    assert used.count(2) == WARMUP_STEPS + 64 and chooser.chosen_after == [ONE]


def test_only_an_inline_trial_covers_a_whole_block() -> None:
    # Reading ahead, the block's cost is off the training thread: TRIAL_STEPS tell its rate,
    # and the slower count is not kept a whole block (64 steps at batch 512).
    chooser = ThreadChooser((ONE, TWO), trial_steps=64, recheck_every=100)
    used = _steps(chooser, 2 * WARMUP_STEPS + TRIAL_STEPS + 64, {1: 0.02, 2: 0.01})
    assert used == [1] * (WARMUP_STEPS + TRIAL_STEPS) + [2] * (WARMUP_STEPS + 64)
    assert chooser.chosen_after == [TWO]


def test_a_trial_covers_a_whole_block_of_batches() -> None:
    assert trial_steps(batches_per_block=64) == 64  # 32k-row blocks at batch 512
    assert trial_steps(batches_per_block=8) == TRIAL_STEPS  # at 4096


def test_one_candidate_is_kept_without_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert candidates_for(TrainerConfig()) == (Candidate(torch.get_num_threads()),)
    chooser = ThreadChooser((Candidate(3),), trial_steps=1, recheck_every=1)
    assert _steps(chooser, 5, {3: 0.1}) == [3] * 5 and chooser.chosen_after == []


def test_candidates_are_the_share_of_cores_with_and_without_the_loaders_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    # 4 cores each: one left to the loader thread, or all four training and batches inline
    assert candidates_for(TrainerConfig()) == (Candidate(3), Candidate(4, read_ahead=False))
    # Worker processes read ahead whatever the thread count.
    assert candidates_for(TrainerConfig(num_workers=2)) == (Candidate(2), Candidate(4))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # one core each: nothing to choose
    assert candidates_for(TrainerConfig()) == (Candidate(1),)
