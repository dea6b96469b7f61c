"""Memory that does not multiply: peak RSS of checkpoint and export over training alone.

    .venv/bin/python -m recsys.bench.scale [--table-rows 1e5,1e6,1e7,5e7] [--max-rows 1e7]
                                           [--steps 300] [--json PATH]

data=criteo (26 tables, dim 16) with one table (C3) grown to each size. For each size, three
fresh processes train the same `--steps` steps: (1) training alone (no checkpoint, no
export), (2) the same plus a checkpoint at the stop, (3) the same plus the serving export.
Each reports its peak RSS (VmHWM) and samples/s; the ratios checkpoint / train and export /
train are what must stay flat (<= 1.15): checkpoint and export write table shards in bounded
chunks from the rank that holds them, so they add a chunk, not a copy of the tables.
`--max-rows` skips larger sizes on a box without the memory (5e7 rows of dim 16 are 3.2 GB
of weights, 4.4 GB with the first-order table and optimizer state).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from recsys.bench.child import run_child
from recsys.bench.fixtures import BENCH_DIR, criteo_config, criteo_logs
from recsys.bench.memory import _peak_mib

TABLE = "C3"  # the table that grows (a hashed id column of the Criteo layout)
DEFAULT_SIZES = (100_000, 1_000_000, 10_000_000, 50_000_000)
PHASES = ("train", "checkpoint", "export")
TARGET_RATIO = 1.15


def phase_overrides(phase: str, rows: int, steps: int) -> list[str]:
    """The run of one phase: the same training, plus a checkpoint or an export."""
    return [
        f"data.tables.{TABLE}.num_buckets={rows}",
        f"trainer.max_steps={steps}",
        "trainer.epochs=1",
        "trainer.early_stopping.enabled=false",
        "data.holdout.fraction=0",  # validation is the (small) eval set, once, at the end
        f"trainer.checkpoint.at_epoch_end={str(phase == 'checkpoint').lower()}",
        f"export.enabled={str(phase == 'export').lower()}",
    ]


def child(phase: str, rows: int, steps: int, train_rows: int) -> dict:
    """Runs in a fresh process: one phase at one table size; its peak RSS and speed."""
    from recsys.train.recipe import run

    cfg = criteo_config(
        criteo_logs(train_rows).parquet, "parquet", phase_overrides(phase, rows, steps)
    )
    cfg.data.eval_path = str(criteo_logs(20_000).parquet)  # a small eval: memory of the phase
    cfg.output_dir = str(_run_dir(phase, rows))
    started = time.perf_counter()
    result = run(cfg)
    return {
        "steps": result.steps,
        "samples_per_s": result.samples_per_second,
        "wall_s": time.perf_counter() - started,
        "peak_mib": _peak_mib()["main_peak_mib"],
    }


def _run_dir(phase: str, rows: int) -> Path:
    return BENCH_DIR / "outputs" / f"scale-{phase}-{rows}"


def measure(phase: str, rows: int, steps: int, train_rows: int) -> dict:
    command = ["--child", phase, str(rows), str(steps), str(train_rows)]
    try:
        return run_child("recsys.bench.scale", command, f"{phase} at {rows:,} table rows")
    finally:
        shutil.rmtree(_run_dir(phase, rows), ignore_errors=True)  # checkpoints, exports: GBs


def bench_scale(
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    max_rows: int | None = None,
    steps: int = 300,
    train_rows: int = 1_000_000,
) -> list[dict]:
    """One row per table size: peak RSS per phase, the ratios to training alone, samples/s.
    Sizes above `max_rows` are listed as skipped."""
    rows = []
    for size in sizes:
        if max_rows is not None and size > max_rows:
            rows.append(
                {"bench": "scale", "table_rows": size, "skipped": f"> --max-rows {max_rows}"}
            )
            continue
        measured = {phase: measure(phase, size, steps, train_rows) for phase in PHASES}
        train_peak = measured["train"]["peak_mib"]
        row = {"bench": "scale", "table": TABLE, "table_rows": size, "steps": steps}
        for phase, m in measured.items():
            row[f"{phase}_peak_mib"] = m["peak_mib"]
            row[f"{phase}_samples_per_s"] = m["samples_per_s"]
            row[f"{phase}_wall_s"] = m["wall_s"]
        row["checkpoint_over_train_peak"] = measured["checkpoint"]["peak_mib"] / train_peak
        row["export_over_train_peak"] = measured["export"]["peak_mib"] / train_peak
        row["target_ratio"] = TARGET_RATIO
        rows.append(row)
    return rows


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'table rows':>12} {'train MiB':>10} {'ckpt MiB':>9} {'export MiB':>11} "
        f"{'ckpt/train':>11} {'export/train':>13} {'samples/s':>10}"
    )
    for r in rows:
        if "skipped" in r:
            print(f"{r['table_rows']:>12,} skipped ({r['skipped']})")
            continue
        print(
            f"{r['table_rows']:>12,} {r['train_peak_mib']:>10,.0f} {r['checkpoint_peak_mib']:>9,.0f} "
            f"{r['export_peak_mib']:>11,.0f} {r['checkpoint_over_train_peak']:>10.3f}x "
            f"{r['export_over_train_peak']:>12.3f}x {r['train_samples_per_s']:>10,.0f}"
        )
    print(f"target: peak / training-alone peak <= {TARGET_RATIO} at checkpoint and at export")


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(float(s)) for s in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table-rows", type=_sizes, default=DEFAULT_SIZES)
    parser.add_argument("--max-rows", type=lambda s: int(float(s)), default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train-rows", type=lambda s: int(float(s)), default=1_000_000)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "scale.json")
    parser.add_argument("--child", nargs=4, metavar=("PHASE", "ROWS", "STEPS", "TRAIN_ROWS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.child:
        phase, rows, steps, train_rows = args.child
        print(json.dumps(child(phase, int(rows), int(steps), int(train_rows))))
        return
    rows = bench_scale(args.table_rows, args.max_rows, args.steps, args.train_rows)
    print_rows(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    print(f"report: {args.json}")


if __name__ == "__main__":
    main()
