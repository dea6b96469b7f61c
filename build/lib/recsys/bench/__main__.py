"""`make bench` / `make bench-data`: every benchmark in one run, printed and saved as JSON.

    .venv/bin/python -m recsys.bench [--only data] [--rows N] [--json PATH]

Numbers are measured side by side in one process tree on the same files, so ratios (vectorised
vs per-value hashing, real loader vs in-memory batches, 5 GB vs 50 MB) are fair even on a
noisy machine; absolute rates depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

from recsys.bench import hashing, loader, memory, training
from recsys.bench.fixtures import BENCH_DIR, criteo_config, criteo_logs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["data"], help="data: hashing and loader only")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic Criteo rows")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run")
    parser.add_argument("--big-gb", type=float, default=float(os.environ.get("BENCH_BIG_GB", 5)))
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "report.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus", "started": time.ctime()}

    print("\n== hashing: ids/s, per-value mmh3 vs vectorised numpy")
    report["hashing"] = hashing.bench_hashing()
    for row in report["hashing"]:
        print(f"  {row['input']:<12} {row['path']:<17} {row['ids_per_s']:>12,.0f} ids/s")

    data = criteo_logs(args.rows)
    print(f"\n== loader alone: Criteo layout (26 id + 13 dense columns), {args.rows:,} rows")
    report["loader"] = loader.bench_loader(data)
    loader.print_rows(report["loader"])

    if args.only != "data":
        print(f"\n== training: real loader vs the same batches in memory ({args.steps} steps)")
        report["training"] = training.bench_training(
            criteo_config(data.parquet, "parquet"), args.steps, rounds=3
        )
        t = report["training"]
        print(
            f"  memory {t['memory_samples_per_s']:,.0f} samples/s, loader "
            f"{t['loader_samples_per_s']:,.0f} samples/s, ratio {t['ratio']:.3f} (target >= 0.9)"
        )
        print(f"\n== memory: peak RSS, 50 MB vs {args.big_gb:g} GB raw TSV")
        report["memory"] = memory.bench_memory(50, args.big_gb, steps=200)
        memory.print_rows(report["memory"])

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nreport: {args.json}")


if __name__ == "__main__":
    main()
