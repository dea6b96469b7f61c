"""The hashing trick, shown: memory and speed stay flat as the number of distinct ids grows.

    .venv/bin/python -m recsys.bench.distinct [--distinct 1e3,1e5,1e7,1e9] [--rows N] [--steps N]

For each distinct-id count (per categorical column), a synthetic Criteo-layout log of the same
number of rows is drawn (`recsys-data synth --distinct N`), and a fresh process trains
`--steps` steps on it with data=criteo's tables, whose sizes do not change: ids hash into
the same buckets however many there are. Peak RSS and samples/s are reported per count and
as a ratio to the smallest count; the hashing trick holds when every ratio is within
+-10%. Rounds alternate the order of the counts (ascending, then descending, ...) so a
drifting machine hits all alike; samples/s is the median over rounds, peak RSS the maximum.
After training, the child also streams the file once through the loader alone (rows/s): ids
that repeat are hashed once per block from Parquet's dictionary, ids that do not are decoded
and hashed one by one, and on a small machine that work shares the cores with training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from recsys.bench.child import run_child
from recsys.bench.fixtures import BENCH_DIR, criteo_config, criteo_logs
from recsys.bench.loader import loader_dataset, rows_per_second
from recsys.bench.memory import _peak_mib

DEFAULT_DISTINCT = (10**3, 10**5, 10**7, 10**9)
EVAL_ROWS = 20_000  # a small eval set: what is measured is training


def distinct_log(distinct: int, rows: int, root: Path = BENCH_DIR) -> Path:
    """Parquet log of `rows` rows whose categorical columns have `distinct` ids each (cached)."""
    from data_tools.synth import SynthOptions, write_synthetic

    out = root / f"distinct_{distinct}_{rows}"
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        write_synthetic(SynthOptions(out=str(out), rows=rows, distinct=(distinct,)))
        (out / ".complete").touch()
    return out


def child(path: str, eval_path: str, steps: int) -> dict:
    """In a fresh process: train `steps` steps on `path`; samples/s and peak RSS."""
    from recsys.train.recipe import run

    cfg = criteo_config(Path(path), "parquet", [f"trainer.max_steps={steps}"])
    cfg.data.eval_path = eval_path
    result = run(cfg)
    peak = _peak_mib()["main_peak_mib"]  # of training: the loader pass below comes after
    _, loader_rate = rows_per_second(loader_dataset(cfg, cfg.trainer.num_workers))
    return {
        "steps": result.steps,
        "samples_per_s": result.samples_per_second,
        "peak_mib": peak,
        "loader_rows_per_s": loader_rate,
    }


def measure(path: Path, eval_path: Path, steps: int) -> dict:
    command = ["--child", str(path), str(eval_path), str(steps)]
    return run_child("recsys.bench.distinct", command, f"training on {path}")


def bench_distinct(
    distinct: tuple[int, ...] = DEFAULT_DISTINCT,
    rows: int = 200_000,
    steps: int = 350,
    rounds: int = 5,
    root: Path = BENCH_DIR,
) -> list[dict]:
    """One row per distinct-id count: median samples/s, peak RSS, both as ratios to the first."""
    logs = {n: distinct_log(n, rows, root) for n in distinct}
    eval_path = criteo_logs(EVAL_ROWS, root).parquet
    runs: dict[int, list[dict]] = {n: [] for n in distinct}
    for r in range(rounds):
        order = distinct if r % 2 == 0 else tuple(reversed(distinct))
        for n in order:
            runs[n].append(measure(logs[n], eval_path, steps))
    table = []
    for n in distinct:
        rate = statistics.median(m["samples_per_s"] for m in runs[n])
        table.append(
            {
                "distinct_ids": n,
                "samples_per_s": rate,
                "peak_mib": max(m["peak_mib"] for m in runs[n]),
                "loader_rows_per_s": statistics.median(m["loader_rows_per_s"] for m in runs[n]),
            }
        )
    base = table[0]
    for row in table:
        row["samples_per_s_vs_fewest_ids"] = row["samples_per_s"] / base["samples_per_s"]
        row["peak_rss_vs_fewest_ids"] = row["peak_mib"] / base["peak_mib"]
    return table


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'distinct ids':>14} {'samples/s':>10} {'peak MiB':>9} {'speed ratio':>12} "
        f"{'RSS ratio':>10} {'loader rows/s':>14}"
    )
    for r in rows:
        print(
            f"{r['distinct_ids']:>14,} {r['samples_per_s']:>10,.0f} {r['peak_mib']:>9,.0f} "
            f"{r['samples_per_s_vs_fewest_ids']:>11.3f}x {r['peak_rss_vs_fewest_ids']:>9.3f}x "
            f"{r['loader_rows_per_s']:>14,.0f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distinct", default=",".join(str(n) for n in DEFAULT_DISTINCT))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=350)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--child", nargs=3, metavar=("PATH", "EVAL", "STEPS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        path, eval_path, steps = args.child
        print(json.dumps(child(path, eval_path, int(steps))))
        return
    counts = tuple(int(float(n)) for n in args.distinct.split(","))
    print_rows(bench_distinct(counts, args.rows, args.steps, args.rounds))


if __name__ == "__main__":
    main()
