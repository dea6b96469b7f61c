"""`make bench` / `make bench-data`: every benchmark in one run, printed and saved as JSON.

    .venv/bin/python -m recsys.bench [--only data] [--quick] [--rows N] [--json PATH]

Numbers are measured side by side in one process tree on the same files, so ratios (vectorised
vs per-value hashing, recsys vs a plain TorchRec or PyTorch loop, real loader vs pre-made
batches, 2 vs 1 processes, 5 GB vs 50 MB) are fair even on a noisy machine; absolute rates
depend on the machine and its load (the report records the load average). `--quick` runs
every part on tiny inputs (a smoke test, not a measurement) and skips the 5 GB memory run.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from recsys.bench import compare, hashing, loader, memory, processes
from recsys.bench.fixtures import criteo_logs
from recsys.bench.limits import machine_limits

REPORT = Path("outputs/bench/report.json")


@dataclass(frozen=True)
class Sizes:
    """How much each part measures: the full run, or `--quick`."""

    rows: int  # synthetic Criteo rows every part reads
    hash_ids: int
    batch_sizes: tuple[int, ...]
    samples_per_run: int  # steps x batch size of one timed training run
    rounds: int
    process_steps: int
    process_rounds: int


FULL = Sizes(1_000_000, 1_000_000, (512, 4096), 250_000, 5, 300, 2)
QUICK = Sizes(20_000, 20_000, (512, 4096), 8192, 1, 4, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["data"], help="data: hashing and loader only")
    parser.add_argument("--quick", action="store_true", help="tiny inputs: a smoke test")
    parser.add_argument("--rows", type=int, help="synthetic Criteo rows (default 1e6)")
    parser.add_argument("--big-gb", type=float, default=float(os.environ.get("BENCH_BIG_GB", 5)))
    parser.add_argument("--json", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rows = args.rows or sizes.rows
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "torch_threads": torch.get_num_threads(),
        "started": time.ctime(),
        "load_average_at_start": os.getloadavg()[0],
        "quick": args.quick,
    }

    print("\n== hashing: ids/s, per-value mmh3 vs vectorised numpy")
    report["hashing"] = hashing.bench_hashing(sizes.hash_ids)
    for row in report["hashing"]:
        print(f"  {row['input']:<12} {row['path']:<17} {row['ids_per_s']:>12,.0f} ids/s")

    data = criteo_logs(rows)
    print(f"\n== loader alone: Criteo layout (26 id + 13 dense columns), {rows:,} rows")
    report["loader"] = loader.bench_loader(data)
    loader.print_rows(report["loader"])

    if args.only != "data":
        _training(report, data, sizes, args.big_gb, args.quick)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nreport: {args.json}")


def _training(report: dict, data, sizes: Sizes, big_gb: float, quick: bool) -> None:
    print("\n== training: recsys vs a plain TorchRec DLRM loop vs plain PyTorch (one process)")
    steps = {b: max(sizes.samples_per_run // b, 1) for b in sizes.batch_sizes}
    limits = functools.partial(machine_limits, 512, 64) if quick else machine_limits
    report["compare"] = compare.bench_compare(data, sizes.batch_sizes, steps, sizes.rounds, limits)
    compare.print_report(report["compare"])

    size = sizes.batch_sizes[0]
    print(f"\n== processes: recsys end to end, 1 vs 2 processes (torchrun, gloo), batch {size}")
    report["processes"] = processes.bench_processes(
        data, size, sizes.process_steps, sizes.process_rounds
    )
    processes.print_report(report["processes"])

    if not quick:
        print(f"\n== memory: peak RSS, 50 MB vs {big_gb:g} GB raw TSV")
        report["memory"] = memory.bench_memory(50, big_gb, steps=200)
        memory.print_rows(report["memory"])
    report["load_average_at_end"] = os.getloadavg()[0]


if __name__ == "__main__":
    main()
