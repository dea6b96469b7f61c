"""Benchmark inputs: Criteo-layout click logs made by `recsys-data synth`, cached under data/bench.

Every benchmark reads the same files, so the numbers in one `make bench` report are measured
on the same bytes. Files are generated once and reused (synth is deterministic per seed).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from data_tools.arrow_io import atomic_path
from data_tools.synth import OutputFormat, SynthOptions, write_synthetic
from recsys.compose import load_config
from recsys.config import TrainConfig

log = logging.getLogger(__name__)

BENCH_DIR = Path(os.environ.get("RECSYS_BENCH_DIR", "data/bench"))


@dataclass(frozen=True)
class BenchData:
    parquet: Path  # folder of Parquet files (columns label, I1..I13, C1..C26, p_true)
    tsv: Path  # folder of raw Criteo TSV files (same rows)
    rows: int


def criteo_logs(rows: int, root: Path = BENCH_DIR) -> BenchData:
    """The same `rows` synthetic Criteo rows as Parquet and as raw TSV (made once, cached)."""
    base = root / f"criteo_{rows}"
    paths = {}
    for fmt in (OutputFormat.parquet, OutputFormat.tsv):
        out = base / fmt.value
        if not (out / ".complete").exists():
            shutil.rmtree(out, ignore_errors=True)
            log.info("writing %d synthetic Criteo rows as %s to %s", rows, fmt.value, out)
            write_synthetic(SynthOptions(out=str(out), rows=rows, format=fmt, progress=True))
            (out / ".complete").touch()
        paths[fmt] = out
    return BenchData(paths[OutputFormat.parquet], paths[OutputFormat.tsv], rows)


def big_tsv(source: Path, target_bytes: int, root: Path = BENCH_DIR) -> Path:
    """A TSV file of about `target_bytes`, made by repeating the lines of `source`'s files.

    Repeating rows is fine for a memory benchmark: what is measured is whether anything grows
    with the file, and the loader cannot tell repeated lines from new ones.
    """
    parts = sorted(p for p in source.iterdir() if p.suffix == ".tsv")
    one_pass = sum(p.stat().st_size for p in parts)
    copies = max(1, round(target_bytes / one_pass))
    out = root / f"big_{copies * one_pass >> 20}MiB" / "part-00000.tsv"
    if out.exists() and out.stat().st_size == copies * one_pass:
        return out
    log.info("writing %d copies of %s (%d MiB) to %s", copies, source, one_pass >> 20, out)
    with atomic_path(out) as tmp, tmp.open("wb") as sink:
        for _ in range(copies):
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, sink, 1 << 24)
    return out


def criteo_config(train_path: Path, fmt: str, overrides: list[str] = ()) -> TrainConfig:
    """data=criteo over `train_path`, no tracking or export: only training is measured."""
    return load_config(
        [
            "data=criteo",
            f"data.format={fmt}",
            f"data.train_path={train_path}",
            f"data.eval_path={train_path}",
            "tracking=none",
            "export.enabled=false",
            "trainer.progress_bar=false",
            *overrides,
        ],
        output_dir=str(BENCH_DIR / "outputs"),
    )
