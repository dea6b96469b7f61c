"""Resident memory vs file size: the loader streams, so a 5 GB log costs what a 50 MB one does.

    .venv/bin/python -m recsys.bench.memory [--small-mb 50] [--big-gb 5] [--steps 200]

For each file (raw Criteo TSV, the big one made by repeating the small one's lines), a fresh
process (1) trains `--steps` steps with the default loader settings and (2) streams the whole
file through the loader, featurizing every row. Peak resident memory (ru_maxrss of the
process and, separately, of its loader workers) is reported side by side, with the ratio
big / small. Memory that grew with the file would show up as a ratio far above 1.
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

from recsys.bench.child import run_child
from recsys.bench.fixtures import big_tsv, criteo_config, criteo_logs

ROWS_PER_MB = 4_100  # raw Criteo-layout TSV from synth: about 243 bytes per row


def _peak_mib() -> dict[str, float]:
    """Peak RSS of this process (VmHWM) and of its finished children (loader workers), MiB.

    Not ru_maxrss for this process: Linux carries it across exec, so a child started by a
    big parent would report the parent's peak.
    """
    status = Path("/proc/self/status").read_text()
    hwm_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    return {
        "main_peak_mib": hwm_kib / 1024,
        "workers_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def child(path: str, mode: str, steps: int) -> dict:
    """Runs in a fresh process: train `steps` steps, or stream every row of `path`."""
    if mode == "train":
        from recsys.train.recipe import run

        cfg = criteo_config(Path(path), "criteo", [f"trainer.max_steps={steps}"])
        cfg.data.eval_path = str(criteo_logs(20_000).tsv)  # a small eval: memory of training
        result = run(cfg)
        done = {"steps": result.steps, "samples_per_s": result.samples_per_second}
    else:
        from recsys.bench.loader import loader_dataset, rows_per_second
        from recsys.config import TrainerConfig

        cfg = criteo_config(Path(path), "criteo")
        rows, rate = rows_per_second(loader_dataset(cfg, TrainerConfig().num_workers))
        done = {"rows": rows, "rows_per_s": rate}
    return {**done, **_peak_mib()}


def measure(path: Path, mode: str, steps: int) -> dict:
    command = ["--child", str(path), mode, str(steps)]
    row = run_child("recsys.bench.memory", command, f"{mode} on {path}")
    return {"file_mib": path.stat().st_size / 2**20 if path.is_file() else _dir_mib(path), **row}


def _dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def bench_memory(small_mb: int, big_gb: float, steps: int) -> list[dict]:
    small = criteo_logs(small_mb * ROWS_PER_MB).tsv
    big = big_tsv(small, int(big_gb * 2**30))
    rows = []
    for mode in ("train", "stream"):
        measured = {name: measure(p, mode, steps) for name, p in (("small", small), ("big", big))}
        for name, m in measured.items():
            rows.append({"bench": "memory", "mode": mode, "file": name, **m})
        rows.append(
            {
                "bench": "memory",
                "mode": mode,
                "file": "big/small",
                "main_peak_ratio": measured["big"]["main_peak_mib"]
                / measured["small"]["main_peak_mib"],
                "workers_peak_ratio": measured["big"]["workers_peak_mib"]
                / max(measured["small"]["workers_peak_mib"], 1e-9),
            }
        )
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'mode':<7} {'file':<10} {'file MiB':>9} {'main MiB':>9} {'workers MiB':>12}")
    for r in rows:
        if r["file"] == "big/small":
            print(
                f"{r['mode']:<7} {'big/small':<10} {'':>9} {r['main_peak_ratio']:>8.2f}x "
                f"{r['workers_peak_ratio']:>11.2f}x"
            )
        else:
            print(
                f"{r['mode']:<7} {r['file']:<10} {r['file_mib']:>9,.0f} "
                f"{r['main_peak_mib']:>9,.0f} {r['workers_peak_mib']:>12,.0f}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=int, default=50)
    parser.add_argument("--big-gb", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--child", nargs=3, metavar=("PATH", "MODE", "STEPS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        path, mode, steps = args.child
        print(json.dumps(child(path, mode, int(steps))))
        return
    print_rows(bench_memory(args.small_mb, args.big_gb, args.steps))


if __name__ == "__main__":
    main()
