"""The benchmarks run end to end on tiny inputs (their numbers are checked by `make bench`)."""

from __future__ import annotations

import pytest

from recsys.bench import loader, memory, training
from recsys.bench.fixtures import big_tsv, criteo_config, criteo_logs


@pytest.fixture(scope="module")
def tiny_criteo(tmp_path_factory):
    return criteo_logs(3000, root=tmp_path_factory.mktemp("bench"))


def test_loader_bench_reads_every_row_from_parquet_and_tsv(tiny_criteo):
    rows = loader.bench_loader(tiny_criteo, workers=(0,))
    assert {r["input"] for r in rows} == {"parquet", "tsv"}
    assert all(r["rows"] == 3000 and r["rows_per_s"] > 0 for r in rows)


def test_training_bench_compares_the_same_number_of_steps(tiny_criteo, tmp_path):
    cfg = criteo_config(tiny_criteo.parquet, "parquet", ["trainer.batch_size=256"])
    cfg.output_dir = str(tmp_path)
    row = training.bench_training(cfg, steps=4, rounds=1)
    assert row["memory_samples_per_s"] > 0 and row["loader_samples_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["loader_samples_per_s"] / row["memory_samples_per_s"])


def test_big_tsv_repeats_the_source_lines(tiny_criteo, tmp_path):
    source_bytes = sum(p.stat().st_size for p in tiny_criteo.tsv.glob("*.tsv"))
    big = big_tsv(tiny_criteo.tsv, 3 * source_bytes, root=tmp_path)
    assert big.stat().st_size == 3 * source_bytes
    first = (tiny_criteo.tsv / "part-00000.tsv").read_bytes()
    assert big.read_bytes()[: len(first)] == first


@pytest.mark.slow
def test_memory_bench_child_reports_peak_rss(tiny_criteo):
    row = memory.measure(tiny_criteo.tsv / "part-00000.tsv", "stream", steps=0)
    assert row["rows"] == 3000 and row["main_peak_mib"] > 50
