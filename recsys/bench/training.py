"""End-to-end training throughput with the real loader vs the same batches pre-made in memory.

    .venv/bin/python -m recsys.bench.training [--rows N] [--steps N] [--rounds N]

Both runs train the same model (data=criteo, default model and trainer settings, the default
`trainer.num_workers`) through the same `Epoch` loop; only where the batches come from
differs. Rounds alternate (memory, loader, memory, loader, ...) so that drift of a noisy
machine hits both sides alike; the report gives the median of each and their ratio
(loader / memory; the target is >= 0.95: training should not wait on data).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice

from torch.utils.data import IterableDataset

from recsys.bench.fixtures import criteo_config, criteo_logs
from recsys.config import TrainConfig
from recsys.data.batch import Batch
from recsys.data.loader import LoaderOptions, StreamingDataset, make_loader
from recsys.data.progress import EpochProgress
from recsys.distributed.env import DistEnv, init_distributed, shutdown_distributed
from recsys.schema import Schema, resolve_schema
from recsys.train.build import build_training, datasets
from recsys.train.loop import Epoch, TrainJob, TrainState
from recsys.train.threads import Candidate, chooser_for


class PremadeBatches(IterableDataset):
    """Batches already featurized and held in memory, served like a `StreamingDataset`."""

    batches_per_block = 1  # each comes on its own

    def __init__(self, batches: list[Batch], batch_size: int):
        super().__init__()
        self.batches = batches
        self.options = LoaderOptions(batch_size, num_workers=0)
        self.num_rows = sum(b.num_real_rows for b in batches)
        self.read_rows = batch_size  # nothing to featurize: no block to read ahead over
        self.epoch = 0

    def set_epoch(self, epoch: int, resume: EpochProgress | None = None) -> None:
        self.epoch = epoch

    def new_progress(self) -> EpochProgress:
        return EpochProgress(epoch=self.epoch)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)


def premade(dataset: StreamingDataset, steps: int) -> PremadeBatches:
    """The first `steps` batches `dataset` yields (same rows, same order), read in process."""
    options = replace(dataset.options, num_workers=0)
    in_process = StreamingDataset(dataset.path, dataset.schema, options)
    batches = list(islice(iter(make_loader(in_process)), steps))
    return PremadeBatches(batches, options.batch_size)


class RecsysRuns:
    """recsys training as `make train` runs it (same config, model, optimizers, `Epoch` loop),
    timed on the real loader or on the same batches pre-made in memory.

    Every run is one epoch of `steps` steps from step 0 (max_steps), timed by the wall clock
    from the epoch's start to its end, loader start-up and pipeline fill included.
    """

    def __init__(self, cfg: TrainConfig, schema: Schema, env: DistEnv, steps: int):
        self.steps = steps
        self.loader = datasets(cfg, schema, env).train
        training = build_training(cfg, schema, env)
        cfg.trainer.max_steps = steps  # TrainState starts at step 0 in every run
        self.job = TrainJob(training.model, training.optimizer, schema, cfg.trainer, env)
        # Threads are chosen per source: what suits pre-made batches need not suit the loader.
        self._choosers = {
            LOADER: chooser_for(cfg.trainer, self.loader.batches_per_block),
            PREMADE: chooser_for(cfg.trainer, PremadeBatches.batches_per_block),
        }

    @functools.cached_property
    def memory(self) -> PremadeBatches:
        """The loader's first `steps` batches, featurized once and kept."""
        return premade(self.loader, self.steps)

    def run(
        self, dataset: StreamingDataset | PremadeBatches, max_seconds: float = float("inf")
    ) -> tuple[int, float]:
        """(samples trained, seconds) of one epoch of at most `steps` steps, ended early
        when `max_seconds` have passed."""
        self.job.threads = self._choosers[LOADER if dataset is self.loader else PREMADE]
        state = TrainState()
        start = time.perf_counter()
        with Epoch(self.job, dataset, state) as epoch:
            for _ in epoch:  # nothing is tracked here
                if time.perf_counter() - start > max_seconds:
                    break
        seconds = time.perf_counter() - start
        epoch.end()
        return state.samples, seconds

    def chosen(self) -> dict[str, Candidate]:
        """recsys_premade / recsys_loader -> the threads and read-ahead each chose last."""
        return {name: chooser.chosen for name, chooser in self._choosers.items()}


LOADER, PREMADE = "recsys_loader", "recsys_premade"  # the contenders' names in `make bench`
SOURCES = (LOADER, PREMADE)


def bench_training(cfg: TrainConfig, steps: int, rounds: int) -> dict:
    """samples/s of `rounds` real-loader runs and `rounds` in-memory runs of `steps` steps."""
    env = init_distributed(cfg.trainer.device)
    try:
        schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
        runs = RecsysRuns(cfg, schema, env, steps)
        runs.run(runs.memory)  # warm-up: first steps allocate and fault in the tables
        rates = {"memory": [], "loader": []}
        for _ in range(rounds):
            for name, dataset in (("memory", runs.memory), ("loader", runs.loader)):
                samples, seconds = runs.run(dataset)
                rates[name].append(samples / seconds)
    finally:
        shutdown_distributed()
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "bench": "training",
        "steps": steps,
        "batch_size": cfg.trainer.batch_size,
        "num_workers": cfg.trainer.num_workers,
        "memory_samples_per_s": median["memory"],
        "loader_samples_per_s": median["loader"],
        "ratio": median["loader"] / median["memory"],
        "rounds": rates,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. model=dcn")
    args = parser.parse_args(argv)
    data = criteo_logs(args.rows)
    cfg = criteo_config(data.parquet, "parquet", args.overrides)
    row = bench_training(cfg, args.steps, args.rounds)
    print(
        f"training samples/s, {row['steps']} steps of {row['batch_size']}, "
        f"{row['num_workers']} loader worker(s):\n"
        f"  pre-made in memory {row['memory_samples_per_s']:>10,.0f}\n"
        f"  real loader        {row['loader_samples_per_s']:>10,.0f}\n"
        f"  ratio loader/memory {row['ratio']:.3f}  (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
