"""Loader throughput: rows/s of the streaming loader alone on the Criteo layout.

    .venv/bin/python -m recsys.bench.loader [--rows N]

Reads the same synthetic rows from Parquet and from raw TSV, featurizes them (hash 26 id
columns, transform 13 dense ones) into `Batch`es exactly as training does, and reports rows/s
in the main process (0 workers) and with the default `trainer.num_workers`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recsys.bench.fixtures import BenchData, criteo_config, criteo_logs
from recsys.config import TrainConfig, TrainerConfig
from recsys.data.loader import LoaderOptions, StreamingDataset, make_loader
from recsys.data.source import SourceFormat
from recsys.schema import resolve_schema

FORMATS = {"parquet": "parquet", "tsv": "criteo"}  # bench file kind -> data.format


def loader_dataset(cfg: TrainConfig, num_workers: int) -> StreamingDataset:
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    options = LoaderOptions(
        cfg.trainer.batch_size,
        num_workers=num_workers,
        source=SourceFormat.from_config(cfg.data),
    )
    return StreamingDataset(cfg.data.train_path, schema, options)


def rows_per_second(dataset: StreamingDataset) -> tuple[int, float]:
    """One full pass; the clock starts at the first batch (worker start-up is not reading)."""
    batches = iter(make_loader(dataset))
    rows = next(batches).num_real_rows
    started = time.perf_counter()
    for batch in batches:
        rows += batch.num_real_rows
    return rows, rows / (time.perf_counter() - started)


def bench_loader(data: BenchData, workers: tuple[int, ...] | None = None) -> list[dict]:
    default_workers = TrainerConfig().num_workers
    rows = []
    for kind, fmt in FORMATS.items():
        path: Path = data.parquet if kind == "parquet" else data.tsv
        cfg = criteo_config(path, fmt)
        for num_workers in workers or sorted({0, 1, default_workers}):
            read, rate = rows_per_second(loader_dataset(cfg, num_workers))
            if read != data.rows:
                raise AssertionError(
                    f"{kind}: loader yielded {read} rows, the file has {data.rows}"
                )
            rows.append(
                {
                    "bench": "loader",
                    "input": kind,
                    "workers": num_workers,
                    "default_workers": num_workers == default_workers,
                    "rows": read,
                    "rows_per_s": rate,
                }
            )
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'input':<8} {'workers':>7} {'rows':>10} {'rows/s':>12}")
    for r in rows:
        mark = "  (default)" if r["default_workers"] else ""
        print(f"{r['input']:<8} {r['workers']:>7} {r['rows']:>10,} {r['rows_per_s']:>12,.0f}{mark}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args(argv)
    print_rows(bench_loader(criteo_logs(args.rows)))


if __name__ == "__main__":
    main()
