"""recsys against what users would write instead, side by side on the same batches.

    .venv/bin/python -m recsys.bench.compare [--rows N] [--batch-sizes 512,4096] [--samples N]
        [--rounds N] [--json PATH] [hydra overrides of recsys' config ...]

At each batch size, in one process (a world of one, gloo) and the baselines in a child process
of their own (`recsys.bench.baseline_process`: recsys' process-wide settings would otherwise
carry over to them), with data=criteo's 26 hashed tables
and 13 dense features:

  recsys_loader     recsys with its defaults, as `make train` runs it, on its own loader
  recsys_premade    the same, its loader's batches pre-made in memory
  torchrec_dlrm     TorchRec's DLRM loop (`recsys.bench.baselines.TorchRecLoop`), pre-made
  plain_pytorch     nn.EmbeddingBag tables + the same dense part (`PlainLoop`), pre-made

Rounds alternate over the contenders (each round starting one further along), so drift of a
shared machine hits all of them alike; the report gives medians. Baselines run with torch's
default intra-op threads, what a user's script gets; recsys times its candidate counts and
keeps the faster (`recsys.train.threads`), and each baseline runs once more at the count that
leaves the loader a core (`<name>_recsys_threads`) to show what threads alone are worth. Each rate is also a
fraction of the machine's limits (`recsys.bench.limits`).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from recsys.bench.baseline_process import BASELINES, BaselineProcess
from recsys.bench.baselines import DLRMShape
from recsys.bench.fixtures import BenchData, criteo_config, criteo_logs
from recsys.bench.limits import (
    MachineLimits,
    SampleCost,
    dlrm_sample_cost,
    fractions,
    machine_limits,
)
from recsys.bench.training import RecsysRuns
from recsys.config import TrainConfig
from recsys.data.batch import Batch
from recsys.distributed.env import DistEnv, init_distributed, shutdown_distributed
from recsys.model.layout import FIRST_ORDER_WIDTH
from recsys.schema import Schema, resolve_schema
from recsys.train.threads import candidates_for

SAME_THREADS = "_recsys_threads"  # suffix of a baseline run at recsys' thread count
# ratio key -> (numerator, denominator, target): what each ratio in the report is. The
# targets compare with the baselines as users run them (torch's default threads).
RATIOS = {
    "recsys_premade_over_torchrec_dlrm": ("recsys_premade", "torchrec_dlrm", 1.0),
    "recsys_premade_over_plain_pytorch": ("recsys_premade", "plain_pytorch", 1.2),
    "recsys_loader_over_recsys_premade": ("recsys_loader", "recsys_premade", 0.95),
    "recsys_loader_over_torchrec_dlrm": ("recsys_loader", "torchrec_dlrm", None),
    "recsys_premade_over_torchrec_dlrm" + SAME_THREADS: (
        "recsys_premade",
        "torchrec_dlrm" + SAME_THREADS,
        None,
    ),
    "recsys_premade_over_plain_pytorch" + SAME_THREADS: (
        "recsys_premade",
        "plain_pytorch" + SAME_THREADS,
        None,
    ),
}


@dataclass
class Contender:
    name: str
    run: Callable[[], tuple[int, float]]  # one timed run: (samples trained, seconds)
    threads: int | None  # intra-op threads set before each run; None: it sets its own
    cost: SampleCost


def contenders(
    cfg: TrainConfig,
    schema: Schema,
    env: DistEnv,
    steps: int,
    default_threads: int,
    baselines: BaselineProcess,
    max_seconds: float = float("inf"),
) -> tuple[list[Contender], int, RecsysRuns]:
    """recsys (loader, pre-made) and the baselines at `cfg.trainer.batch_size`, built on the
    same batches, and the steps each run trains (fewer than `steps` if the file is short).
    A run stops early after `max_seconds`: a collapsed contender still reports its rate.

    Each baseline runs at torch's default threads and, when recsys picks another count, once
    more at that count (`<name>_recsys_threads`): how much of a difference threads explain.
    """
    recsys = RecsysRuns(cfg, schema, env, steps)
    batches = recsys.memory.batches
    steps = len(batches)
    shape = DLRMShape.from_config(cfg, schema)
    cost = _cost(shape, schema, batches)
    bias = FIRST_ORDER_WIDTH if cfg.model.first_order else 0
    entries = [
        Contender(
            "recsys_loader", lambda: recsys.run(recsys.loader, max_seconds), None, cost(bias)
        ),
        Contender(
            "recsys_premade", lambda: recsys.run(recsys.memory, max_seconds), None, cost(bias)
        ),
    ]
    # Plain Adagrad keeps a state per weight, not per row.
    each = {"torchrec_dlrm": cost(), "plain_pytorch": cost(0, shape.dim)}
    ours = candidates_for(cfg.trainer)[0].threads  # the count that leaves the loader a core
    for name in BASELINES:
        for threads, suffix in ((default_threads, ""), (ours, SAME_THREADS)):
            if suffix and ours == default_threads:
                continue
            run = functools.partial(baselines.run, name, threads, steps, max_seconds)
            entries.append(Contender(name + suffix, run, threads, each[name]))
    return entries, steps, recsys


def _cost(shape: DLRMShape, schema: Schema, batches: list[Batch]):
    rows = sum(b.size for b in batches)
    ids = sum(b.sparse.values().numel() for b in batches) / rows

    def cost(bias_width: int = 0, state_floats: int = 1) -> SampleCost:
        return dlrm_sample_cost(
            shape.num_dense,
            shape.dense_arch,
            len(schema.sparse_features),
            shape.dim,
            shape.over_arch,
            ids,
            bias_width,
            state_floats,
        )

    return cost


def alternate(entries: list[Contender], rounds: int) -> dict[str, list[float]]:
    """samples/s of each contender over `rounds` rounds (after one warm-up run each)."""
    threads = torch.get_num_threads()
    rates: dict[str, list[float]] = {c.name: [] for c in entries}
    try:
        for r in range(-1, rounds):  # round -1: warm-up, not recorded
            start = max(r, 0) % len(entries)
            for c in entries[start:] + entries[:start]:
                torch.set_num_threads(c.threads or threads)
                samples, seconds = c.run()
                if r >= 0:
                    rates[c.name].append(samples / seconds)
    finally:
        torch.set_num_threads(threads)
    return rates


def compare_at(
    data: BenchData,
    batch_size: int,
    steps: int,
    rounds: int,
    limits: MachineLimits,
    env: DistEnv,
    overrides: tuple[str, ...] = (),
    max_seconds: float = float("inf"),
) -> dict:
    """One batch size: every contender's median samples/s, ratios and fractions of limits.
    `overrides` (Hydra) change recsys' config, and the baselines' shapes with it."""
    cfg = criteo_config(data.parquet, "parquet", [f"trainer.batch_size={batch_size}", *overrides])
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    baseline_overrides = [f"trainer.batch_size={batch_size}", *overrides]
    with BaselineProcess(data.parquet, baseline_overrides, steps) as baselines:
        entries, steps, recsys = contenders(
            cfg, schema, env, steps, limits.threads, baselines, max_seconds
        )
        rates = alternate(entries, rounds)
    chosen = recsys.chosen()  # recsys' threads and read-ahead after their last trials
    median = {name: statistics.median(r) for name, r in rates.items()}
    out = {
        "batch_size": batch_size,
        "steps": steps,
        "rounds": rounds,
        "max_seconds_per_run": max_seconds,
        "threads": {c.name: c.threads or chosen[c.name].threads for c in entries},
        "loader_reads_ahead": {name: c.read_ahead for name, c in chosen.items()},
        "samples_per_s": median,
        "rounds_samples_per_s": rates,
        "cost_per_sample": {c.name: c.cost.to_dict() for c in entries},
        "fraction_of_limits": {c.name: fractions(median[c.name], c.cost, limits) for c in entries},
        "ratios": {k: median[a] / median[b] for k, (a, b, _) in RATIOS.items() if b in median},
        "targets": {k: t for k, (_, _, t) in RATIOS.items() if t is not None},
        "load_average": os.getloadavg()[0],
    }
    del entries
    gc.collect()
    return out


def bench_compare(
    data: BenchData,
    batch_sizes: tuple[int, ...],
    steps: dict[int, int],
    rounds: int,
    limits: Callable[[], MachineLimits] = machine_limits,
    overrides: tuple[str, ...] = (),
    max_seconds: float = 30.0,
) -> dict:
    """Machine limits, then every batch size's comparison (one process group throughout).
    A run ends after `max_seconds` (its rate is what it trained in that time)."""
    env = init_distributed("cpu")
    try:
        measured = limits()
        results = [
            compare_at(data, b, steps[b], rounds, measured, env, overrides, max_seconds)
            for b in batch_sizes
        ]
    finally:
        shutdown_distributed()
    return {"limits": measured.to_dict(), "overrides": list(overrides), "batch_sizes": results}


def print_report(report: dict) -> None:
    limits = report["limits"]
    print(
        f"machine: matmul {limits['matmul_flops_per_s'] / 1e9:,.1f} GFLOP/s fp32, memory "
        f"{limits['bandwidth_bytes_per_s'] / 1e9:,.1f} GB/s ({limits['threads']} threads)"
    )
    for r in report["batch_sizes"]:
        print(f"\nbatch {r['batch_size']}: {r['steps']} steps x {r['rounds']} rounds, medians")
        print(
            f"  {'contender':<30} {'threads':>7} {'samples/s':>10} {'vs torchrec':>11} "
            f"{'FLOP/sample':>11} {'bytes/sample':>12} {'%matmul':>7} {'%memory':>7}"
        )
        base = r["samples_per_s"]["torchrec_dlrm"]
        for name, rate in r["samples_per_s"].items():
            cost, frac = r["cost_per_sample"][name], r["fraction_of_limits"][name]
            print(
                f"  {name:<30} {r['threads'][name]:>7} {rate:>10,.0f} {rate / base:>10.2f}x "
                f"{cost['flops']:>11,} {cost['embedding_bytes']:>12,} "
                f"{100 * frac['flops_fraction']:>6.1f}% {100 * frac['bandwidth_fraction']:>6.2f}%"
            )
        for name, ahead in r.get("loader_reads_ahead", {}).items():
            how = "read ahead in a thread" if ahead else "made inline, between steps"
            print(f"  {name}: batches {how}")
        for key, value in r["ratios"].items():
            target = r["targets"].get(key)
            verdict = "" if target is None else "ok" if value >= target else "MISSED"
            mark = f"  (target >= {target}: {verdict})" if verdict else ""
            print(f"  {key:<48} {value:.3f}{mark}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-sizes", default="512,4096")
    parser.add_argument("--samples", type=int, default=250_000, help="per run (steps x batch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("overrides", nargs="*", help="recsys config, e.g. trainer.pipeline=false")
    args = parser.parse_args(argv)
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    steps = {b: max(args.samples // b, 2) for b in sizes}
    data = criteo_logs(args.rows)
    report = bench_compare(data, sizes, steps, args.rounds, overrides=tuple(args.overrides))
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
