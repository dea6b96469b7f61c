"""Intra-op threads while training, chosen by timing steps.

Neither "all the cores" nor "all but one for the loader" is right everywhere. On 2 quiet
cores TorchRec's loop with 2 OpenMP threads ran 11-13% slower than with 1 at batch 512 in
three runs and 17% faster in a fourth, and 25-51% faster at 4096 in three (`make bench`); on
2 cores that other processes kept busy, 2 threads trained 4x slower at
4096 and up to 200x slower at 512, because OpenMP threads wait for each other at the end of
every parallel op and one the OS has parked stalls them all for a time slice. So the loop
times both and keeps the faster: `ThreadChooser` trains a few steps at each candidate,
keeps the one with the shorter mean step, and tries again every `recheck_every` steps, as
the machine's load changes.

Where the loader works goes with the count: beside fewer threads it reads ahead on the core
left free; with every core training, the trainer makes each batch inline (recsys.data.prefetch
says why). Against the earlier chooser (1 or 2 threads, the loader always reading ahead, median
steps), in one process on 2 cores, alternating 7 rounds: 1.016x the samples/s at batch 4096
and 1.032x at 512, faster in 6 of 7 rounds at each.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass

import torch

from recsys.config import TrainerConfig
from recsys.data.prefetch import ReadAheadSwitch

log = logging.getLogger(__name__)

#: How long a thread may hold the GIL while another waits (Python's default: 5 ms). The loader
#: reads ahead in a thread; whenever it held the GIL the training thread, which needs it
#: between every op it launches, waited up to 5 ms of a ~5 ms step. At 1 ms a 300-step epoch
#: at batch 512 took 4.5 ms a step instead of 5.3 (pre-made batches) and 5.2 instead of 5.9
#: (own loader); 0.1, 0.5 and 2 ms measured the same as 1 ms.
GIL_SWITCH_SECONDS = 0.001

TRIAL_STEPS = 12  # timed steps per candidate in a trial (at least: see trial_steps)
WARMUP_STEPS = 2  # steps after a switch not timed: the thread team is being rebuilt
# Steps between trials. Two threads' speed can change within a process (another VM taking a
# core's sibling): 3 fresh processes at batch 512, pre-made batches, 2,000 steps between trials
# kept 2 threads in all three, one of which fell to 6.1 ms a step from 4.1 (82.7k samples/s);
# at 400 that one went back to 1 thread (4.5 ms: 103.0k). A trial costs ~14 steps at the
# slower count, under 1% of 500.
RECHECK_EVERY = 500
# A candidate whose mean step, after TRIAL_STEPS timed steps, is this many times one already
# timed in the trial ends its trial there: a trial covers a whole read block (64 steps at
# batch 512), and 2 threads on a busy machine can be 4-200x slower. Inline, the block's reading
# lands on one step, which lifts a 12-step mean ~1.6x at 512 on 2 quiet cores: well below.
ABANDON_RATIO = 3.0


@dataclass(frozen=True)
class Candidate:
    """One way to spend the cores: torch's intra-op threads, and whether the loader thread
    makes batches ahead (read_ahead) or the trainer makes each when it needs it."""

    threads: int
    read_ahead: bool = True


def candidates_for(trainer: TrainerConfig) -> tuple[Candidate, ...]:
    """Ways worth trying: this process's share of the cores less one core per loader thread
    or worker, reading ahead on that core; and the whole share, where an in-process loader
    makes batches inline (recsys.data.prefetch says why). One candidate when OMP_NUM_THREADS
    was set (torchrun sets 1 when it starts several processes), the device is a GPU or there
    is one core."""
    if "OMP_NUM_THREADS" in os.environ or trainer.device != "cpu":
        return (Candidate(torch.get_num_threads()),)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    beside_loader = max(1, share - max(1, trainer.num_workers))
    if beside_loader == share:
        return (Candidate(share),)
    # Worker processes make batches ahead whatever the switch says.
    return (Candidate(beside_loader), Candidate(share, read_ahead=trainer.num_workers > 0))


def trial_steps(batches_per_block: int) -> int:
    """Timed steps per inline candidate: at least one read block's batches. The loader
    featurizes a block at once, so inline the block's first step takes its whole cost: any run
    of that many steps holds exactly one such step, and its mean is the true rate. Reading
    ahead spreads that cost off the training thread: TRIAL_STEPS tell its rate."""
    return max(TRIAL_STEPS, batches_per_block)


class ThreadChooser:
    """Sets torch's intra-op threads and the loader's read-ahead switch before each step;
    `record` each step's seconds (the wait for its batch included).

    Starts at the safe candidate (the fewest threads), trials every candidate for
    `trial_steps` timed steps, or at most TRIAL_STEPS where the loader reads ahead (fewer once
    it is ABANDON_RATIO times slower than one already timed), keeps the one with the shortest
    mean step until the next trial. One candidate: it is simply kept.
    """

    def __init__(
        self,
        candidates: tuple[Candidate, ...],
        trial_steps: int = TRIAL_STEPS,
        recheck_every: int = RECHECK_EVERY,
    ):
        self.candidates = candidates
        self.trial_steps, self.recheck_every = trial_steps, recheck_every
        self.chosen = candidates[0]
        self.chosen_after: list[Candidate] = []  # the choice each trial ended with
        self.switch = ReadAheadSwitch(self.chosen.read_ahead)  # for make_loader
        self._trial: list[tuple[Candidate, list[float]]] = []  # (candidate, step seconds)
        self._until_trial = 0  # steps left before the next trial starts

    @property
    def current(self) -> Candidate:
        """The candidate the next step trains with."""
        return self._trial[-1][0] if self._trial else self.chosen

    def before_step(self) -> None:
        if len(self.candidates) > 1 and not self._trial and self._until_trial <= 0:
            self._trial = [(self.candidates[0], [])]
        torch.set_num_threads(self.current.threads)
        self.switch.set(self.current.read_ahead)

    def record(self, seconds: float) -> None:
        if not self._trial:
            self._until_trial -= 1
            return
        candidate, times = self._trial[-1]
        times.append(seconds)
        if len(times) < WARMUP_STEPS + self._length(candidate) and not self._hopeless(times):
            return
        if len(self._trial) < len(self.candidates):
            self._trial.append((self.candidates[len(self._trial)], []))
            return
        # The mean, not the median: inline, one step in a block carries the block's reading.
        means = {c: statistics.fmean(s[WARMUP_STEPS:]) for c, s in self._trial}
        self.chosen = min(means, key=means.__getitem__)
        self.chosen_after.append(self.chosen)
        steps = ", ".join(f"{_describe(c)}: {m * 1e3:.2f} ms" for c, m in means.items())
        log.info("training with %s (mean step: %s)", _describe(self.chosen), steps)
        self._trial, self._until_trial = [], self.recheck_every

    def _length(self, candidate: Candidate) -> int:
        """Timed steps of the candidate's trial. Reading ahead, a block's cost is off the
        training thread, so a whole block's steps are not needed: a 1-thread trial at batch
        512 took 64 steps at the slower count where 12 tell the same."""
        return min(self.trial_steps, TRIAL_STEPS) if candidate.read_ahead else self.trial_steps

    def _hopeless(self, times: list[float]) -> bool:
        """The candidate being timed is already far slower than one timed before it."""
        timed = times[WARMUP_STEPS:]
        if len(self._trial) < 2 or len(timed) < TRIAL_STEPS:
            return False
        best = min(statistics.fmean(s[WARMUP_STEPS:]) for _, s in self._trial[:-1])
        return statistics.fmean(timed) > ABANDON_RATIO * best


def chooser_for(trainer: TrainerConfig, batches_per_block: int) -> ThreadChooser:
    """The chooser of a training loop over a loader whose blocks hold that many batches."""
    return ThreadChooser(candidates_for(trainer), trial_steps(batches_per_block))


def _describe(candidate: Candidate) -> str:
    loader = "loader reading ahead" if candidate.read_ahead else "batches made inline"
    return f"{candidate.threads} threads, {loader}"


__all__ = [
    "ABANDON_RATIO",
    "GIL_SWITCH_SECONDS",
    "RECHECK_EVERY",
    "TRIAL_STEPS",
    "Candidate",
    "ThreadChooser",
    "candidates_for",
    "chooser_for",
    "trial_steps",
]
