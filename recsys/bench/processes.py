"""1 vs 2 processes: recsys end to end (its own loader) under torchrun, as `make train NPROC=n`.

    .venv/bin/python -m recsys.bench.processes [--rows N] [--batch-size 512] [--steps N]

Each run is a fresh `torchrun --standalone --nproc_per_node=n` (gloo on CPU); every rank reads
its share of the same Parquet files with `trainer.batch_size` rows per step, as `make train
NPROC=n` does, so two processes train twice the rows per step. After a short warm-up epoch,
one epoch of `--steps` steps is timed on rank 0 from a barrier to its end; samples/s counts
the rows trained on all ranks. Runs alternate (1, 2, 1, 2, ...); the report gives medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch.distributed as dist

from recsys.bench.fixtures import BenchData, criteo_config, criteo_logs
from recsys.bench.training import LOADER, RecsysRuns
from recsys.distributed.env import init_distributed, shutdown_distributed
from recsys.schema import resolve_schema

_RESULT = "BENCH_RESULT "  # the line of a child's output that carries its measurement


def child(parquet: Path, batch_size: int, steps: int, overrides: list[str]) -> dict | None:
    """Runs in every rank: warm up, then time one epoch of `steps` steps (rank 0 reports)."""
    cfg = criteo_config(parquet, "parquet", [f"trainer.batch_size={batch_size}", *overrides])
    env = init_distributed(cfg.trainer.device)
    try:
        schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
        runs = RecsysRuns(cfg, schema, env, steps)
        runs.job.trainer.max_steps = max(steps // 5, 1)
        runs.run(runs.loader)  # warm-up: page in the files, allocate, fault in the tables
        runs.job.trainer.max_steps = steps
        dist.barrier()
        samples, seconds = runs.run(runs.loader)
        threads = runs.chosen()[LOADER].threads
    finally:
        shutdown_distributed()
    if env.rank != 0:
        return None
    return {
        "world_size": env.world_size,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "threads_per_process": threads,
    }


def launch(nproc: int, data: BenchData, batch_size: int, steps: int, overrides: list[str]) -> dict:
    """One torchrun of `nproc` processes; rank 0's measurement."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "recsys.bench.processes",
        "--child",
        str(data.parquet),
        str(batch_size),
        str(steps),
        *overrides,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith(_RESULT))
    return {**json.loads(line[len(_RESULT) :]), "launch_seconds": time.perf_counter() - started}


def bench_processes(
    data: BenchData, batch_size: int, steps: int, rounds: int, overrides: list[str] = ()
) -> dict:
    """samples/s of 1 and 2 processes, alternating, medians and their ratio."""
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(rounds):
        for nproc in runs:
            runs[nproc].append(launch(nproc, data, batch_size, steps, list(overrides)))
    median = {n: statistics.median(r["samples_per_s"] for r in rs) for n, rs in runs.items()}
    return {
        "batch_size_per_process": batch_size,
        "steps": steps,
        "rounds": rounds,
        "samples_per_s": {f"{n}_process": m for n, m in median.items()},
        "ratio_2_over_1_process": median[2] / median[1],
        "threads_per_process": {
            f"{n}_process": rs[0]["threads_per_process"] for n, rs in runs.items()
        },
        "runs": {f"{n}_process": rs for n, rs in runs.items()},
    }


def print_report(row: dict) -> None:
    rates = row["samples_per_s"]
    threads = row["threads_per_process"]
    print(
        f"  1 process  {rates['1_process']:>10,.0f} samples/s ({threads['1_process']} threads)\n"
        f"  2 processes {rates['2_process']:>9,.0f} samples/s ({threads['2_process']} thread(s) "
        f"each)\n  ratio 2/1  {row['ratio_2_over_1_process']:.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("PARQUET", "BATCH", "STEPS"))
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. trainer.pipeline=false")
    args = parser.parse_args(argv)
    if args.child:
        parquet, batch, steps = args.child
        result = child(Path(parquet), int(batch), int(steps), args.overrides)
        if result is not None:
            print(_RESULT + json.dumps(result), flush=True)
        return
    data = criteo_logs(args.rows)
    print_report(bench_processes(data, args.batch_size, args.steps, args.rounds, args.overrides))


if __name__ == "__main__":
    main()
