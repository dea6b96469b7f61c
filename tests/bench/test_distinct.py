"""The distinct-ids benchmark trains on logs that differ only in how many ids they hold."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from recsys.bench import distinct


def test_logs_differ_in_distinct_ids_only(tmp_path) -> None:
    few, many = (distinct.distinct_log(n, 5000, root=tmp_path) for n in (10, 10**9))
    count = {
        p: pc.count_distinct(ds.dataset(p).to_table(columns=["C1"])["C1"]).as_py()
        for p in (few, many)
    }
    assert count[few] <= 11 and count[many] > 1000  # (+1: missing values)
    assert ds.dataset(few).count_rows() == ds.dataset(many).count_rows() == 5000


@pytest.mark.slow
def test_bench_reports_flatness_ratios(tmp_path) -> None:
    rows = distinct.bench_distinct((10, 10**9), rows=3000, steps=3, rounds=1, root=tmp_path)
    assert [r["distinct_ids"] for r in rows] == [10, 10**9]
    assert rows[0]["samples_per_s_vs_fewest_ids"] == 1.0 and rows[1]["peak_mib"] > 100
    assert all(r["loader_rows_per_s"] > 0 for r in rows)
