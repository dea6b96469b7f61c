"""Intra-op threads while training, chosen by timing steps.

Neither "all the cores" nor "all but one for the loader" is right everywhere. On 2 quiet
cores TorchRec's loop with 2 OpenMP threads ran 11-13% slower than with 1 at batch 512 in
three runs and 17% faster in a fourth, and 25-51% faster at 4096 in three (`make bench`); on
2 cores that other processes kept busy, 2 threads trained 4x slower at
4096 and up to 200x slower at 512, because OpenMP threads wait for each other at the end of
every parallel op and one the OS has parked stalls them all for a time slice. So the loop
times both and keeps the faster: `ThreadChooser` trains a few steps at each candidate count,
keeps the one with the shorter median step, and tries again every `recheck_every` steps, as
the machine's load changes.
"""

from __future__ import annotations

import logging
import os
import statistics

import torch

from recsys.config import TrainerConfig

log = logging.getLogger(__name__)

#: How long a thread may hold the GIL while another waits (Python's default: 5 ms). The loader
#: reads ahead in a thread; whenever it held the GIL the training thread, which needs it
#: between every op it launches, waited up to 5 ms of a ~5 ms step. At 1 ms a 300-step epoch
#: at batch 512 took 4.5 ms a step instead of 5.3 (pre-made batches) and 5.2 instead of 5.9
#: (own loader); 0.1, 0.5 and 2 ms measured the same as 1 ms.
GIL_SWITCH_SECONDS = 0.001

TRIAL_STEPS = 12  # timed steps per candidate in a trial (after WARMUP_STEPS untimed)
WARMUP_STEPS = 2  # steps after a switch not timed: the thread team is being rebuilt
# Steps between trials. Two threads' speed can change within a process (another VM taking a
# core's sibling): 3 fresh processes at batch 512, pre-made batches, 2,000 steps between trials
# kept 2 threads in all three, one of which fell to 6.1 ms a step from 4.1 (82.7k samples/s);
# at 400 that one went back to 1 thread (4.5 ms: 103.0k). A trial costs ~14 steps at the
# slower count, under 1% of 500.
RECHECK_EVERY = 500


def candidate_threads(trainer: TrainerConfig) -> tuple[int, ...]:
    """Thread counts worth trying: this process's share of the cores, and that share less
    one core per loader thread or worker. One count when OMP_NUM_THREADS was set (torchrun
    sets 1 when it starts several processes), the device is a GPU or there is one core."""
    if "OMP_NUM_THREADS" in os.environ or trainer.device != "cpu":
        return (torch.get_num_threads(),)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    beside_loader = max(1, share - max(1, trainer.num_workers))
    return tuple(sorted({beside_loader, share}))


class ThreadChooser:
    """Sets torch's intra-op threads before each step; `record` each step's seconds.

    Starts at the safe count (the fewest), trials every candidate for `trial_steps` timed
    steps, keeps the fastest until the next trial. One candidate: it is simply kept.
    """

    def __init__(
        self,
        candidates: tuple[int, ...],
        trial_steps: int = TRIAL_STEPS,
        recheck_every: int = RECHECK_EVERY,
    ):
        self.candidates = candidates
        self.trial_steps, self.recheck_every = trial_steps, recheck_every
        self.chosen = candidates[0]
        self.chosen_after: list[int] = []  # the choice each trial ended with (for tests, logs)
        self._trial: list[tuple[int, list[float]]] = []  # (threads, step seconds) per candidate
        self._until_trial = 0  # steps left before the next trial starts

    @property
    def threads(self) -> int:
        """The count the next step trains with."""
        return self._trial[-1][0] if self._trial else self.chosen

    def before_step(self) -> None:
        if len(self.candidates) > 1 and not self._trial and self._until_trial <= 0:
            self._trial = [(self.candidates[0], [])]
        torch.set_num_threads(self.threads)

    def record(self, seconds: float) -> None:
        if not self._trial:
            self._until_trial -= 1
            return
        threads, times = self._trial[-1]
        times.append(seconds)
        if len(times) < WARMUP_STEPS + self.trial_steps:
            return
        if len(self._trial) < len(self.candidates):
            self._trial.append((self.candidates[len(self._trial)], []))
            return
        medians = {t: statistics.median(s[WARMUP_STEPS:]) for t, s in self._trial}
        self.chosen = min(medians, key=medians.__getitem__)
        self.chosen_after.append(self.chosen)
        steps = ", ".join(f"{t}: {m * 1e3:.2f} ms" for t, m in medians.items())
        log.info("intra-op threads: %d (median step by thread count: %s)", self.chosen, steps)
        self._trial, self._until_trial = [], self.recheck_every


__all__ = [
    "GIL_SWITCH_SECONDS",
    "RECHECK_EVERY",
    "TRIAL_STEPS",
    "ThreadChooser",
    "candidate_threads",
]
