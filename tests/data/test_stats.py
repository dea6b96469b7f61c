"""Tests for `recsys-data stats` (recsys.data.stats) and its HyperLogLog (recsys.data.hll)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools.synth import OutputFormat, SynthOptions, write_synthetic
from recsys.cli.data import main
from recsys.config import DataConfig, DenseTransform, FeatureKind, FeatureSpec, TableSpec
from recsys.data.featurize import DataError
from recsys.data.hll import HyperLogLog
from recsys.data.stats import StatsOptions, compute_stats, expected_collision_rate
from recsys.hashing import hash_array
from recsys.schema import resolve_schema


@pytest.mark.parametrize("n", [1, 50, 3_000, 200_000])
def test_hll_distinct_count_within_3_percent(n: int) -> None:
    sketch = HyperLogLog()
    for start in range(0, n, 50_000):  # in batches, with every id seen twice
        ids = pa.array([f"user-{i}" for i in range(start, min(n, start + 50_000))] * 2)
        sketch.add(ids)
    assert sketch.estimate() == pytest.approx(n, rel=0.03)


def test_hll_merge_equals_one_sketch() -> None:
    a, b, both = HyperLogLog(), HyperLogLog(), HyperLogLog()
    left, right = pa.array(np.arange(0, 60_000)), pa.array(np.arange(40_000, 100_000))
    a.add(left), b.add(right), both.add(left), both.add(right)
    a.merge(b)
    assert np.array_equal(a.registers, both.registers)
    assert a.estimate() == pytest.approx(100_000, rel=0.03)


@pytest.mark.parametrize(("n", "buckets"), [(2_000, 4_096), (5_000, 1_000), (300, 65_536)])
def test_collision_rate_formula_matches_real_hashing(n: int, buckets: int) -> None:
    shares = []
    for seed in range(8):  # the bucketing the model uses, on 8 different id sets
        ids = pa.array([f"{seed}-id-{i}" for i in range(n)])
        counts = np.bincount(hash_array(ids, seed, buckets), minlength=buckets)
        in_shared = counts[counts > 1].sum()
        shares.append(in_shared / n)
    expected = expected_collision_rate(n, buckets)
    assert np.mean(shares) == pytest.approx(expected, abs=0.01 + 0.05 * expected)
    assert expected_collision_rate(1, buckets) == 0.0 and expected_collision_rate(5, 2) == 1.0


def _config(path: Path, **extra) -> DataConfig:
    return DataConfig(
        name="t",
        train_path=str(path),
        features={
            "user": FeatureSpec(kind=FeatureKind.id, seed=1),
            "tags": FeatureSpec(kind=FeatureKind.id_list, seed=2, table="shared"),
            "page": FeatureSpec(kind=FeatureKind.id, seed=3, table="shared"),
            "views": FeatureSpec(kind=FeatureKind.dense, transform=DenseTransform.log1p),
        },
        tables={"user": TableSpec(num_buckets=100), "shared": TableSpec(num_buckets=1000)},
        **extra,
    )


def test_missing_rates_lengths_and_values_are_exact(tmp_path: Path) -> None:
    rows = 6
    table = pa.table(
        {
            "label": pa.array([1, 0, 0, 1, 0, 0], pa.int8()),
            "user": pa.array(["a", None, "", "b", "a", "c"]),
            "tags": pa.array([["x", "y"], None, [], ["x", ""], [None], ["z", "x", "w"]]),
            "page": pa.array([7, 8, None, 7, 7, 9], pa.int64()),
            "views": pa.array([0.0, None, 3.0, 1.0, None, 7.0]),
        }
    )
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=4)
    data = _config(tmp_path)
    stats = compute_stats(data, resolve_schema(data, 16), data.train_path)
    by_name = {f.name: f for f in stats.features}
    assert stats.rows == rows and stats.label_rate == pytest.approx(2 / 6)
    assert by_name["user"].missing == 2 and by_name["user"].missing_rate == pytest.approx(2 / 6)
    assert by_name["user"].distinct == pytest.approx(3, abs=0.01)
    assert by_name["tags"].missing == 3  # null list, empty list, list of one null
    assert by_name["tags"].list_length == {"min": 0, "mean": pytest.approx(6 / 6), "max": 3}
    assert by_name["tags"].distinct == pytest.approx(4, abs=0.01)  # x y z w
    assert by_name["page"].missing == 1
    views = by_name["views"]
    assert views.missing == 2
    assert views.values["min"] == 0.0 and views.values["max"] == 7.0
    assert views.values["mean"] == pytest.approx(11 / 4)
    logs = np.log1p([0.0, 3.0, 1.0, 7.0])
    assert views.values["transformed_mean"] == pytest.approx(logs.mean())
    assert views.values["transformed_std"] == pytest.approx(logs.std())
    # tags and page share a table: its collision rate counts both features' ids (4 + 3)
    assert by_name["page"].collision_rate == pytest.approx(
        expected_collision_rate(7, 1000), rel=1e-3
    )
    assert by_name["user"].collision_rate == pytest.approx(
        expected_collision_rate(3, 100), rel=1e-3
    )

    first = compute_stats(data, resolve_schema(data, 16), data.train_path, StatsOptions(max_rows=3))
    assert first.rows == 3 and first.features[0].missing == 2


def _criteo_data(path: str, fmt: str) -> DataConfig:
    features = {
        "I1": FeatureSpec(kind=FeatureKind.dense, transform=DenseTransform.log1p),
        "C1": FeatureSpec(kind=FeatureKind.id, seed=1),
        "C2": FeatureSpec(kind=FeatureKind.id, seed=2),
    }
    tables = {"C1": TableSpec(num_buckets=1 << 12), "C2": TableSpec(num_buckets=1 << 12)}
    return DataConfig(name="c", train_path=path, format=fmt, features=features, tables=tables)


def test_text_and_parquet_give_the_same_statistics(tmp_path: Path) -> None:
    common = {"rows": 3_000, "seed": 5, "distinct": (800,), "missing_rate": 0.1}
    tsv = write_synthetic(SynthOptions(out=str(tmp_path / "t"), format=OutputFormat.tsv, **common))
    parquet = write_synthetic(SynthOptions(out=str(tmp_path / "p"), **common))
    results = []
    for path, fmt in ((tsv.files[0], "criteo"), (parquet.files[0], "parquet")):
        data = _criteo_data(path, fmt)
        results.append(compute_stats(data, resolve_schema(data, 16), path))
    text, columnar = results
    assert text.rows == columnar.rows == 3_000
    for a, b in zip(text.features, columnar.features, strict=True):
        assert (a.missing, a.distinct, a.collision_rate) == (
            b.missing,
            b.distinct,
            b.collision_rate,
        )
        assert a.values == b.values
    c1 = pq.read_table(parquet.files[0], columns=["C1"]).column("C1")
    assert text.features[1].missing == c1.null_count
    assert text.features[1].distinct == pytest.approx(len(c1.unique()) - 1, rel=0.03)


def test_bad_text_rows_fail_or_are_counted(tmp_path: Path) -> None:
    report = write_synthetic(SynthOptions(out=str(tmp_path), rows=50, format=OutputFormat.tsv))
    path = Path(report.files[0])
    lines = path.read_text().splitlines()
    lines[9] += "\textra"  # 41 fields: a bad row
    lines[11] = "\t".join(lines[11].split("\t")[:30])  # 30: trailing fields stripped, padded
    path.write_text("\n".join(lines) + "\n")
    data = _criteo_data(str(path), "criteo")
    with pytest.raises(DataError, match="line 10, line .* has 41 columns, expected 40"):
        compute_stats(data, resolve_schema(data, 16), str(path))
    data.on_bad_row = "skip"
    stats = compute_stats(data, resolve_schema(data, 16), str(path))
    assert stats.rows == 49 and stats.bad_rows == {"wrong_column_count": 1}
    assert stats.rows_padded == 1


def test_cli_stats_on_the_criteo_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    logs = tmp_path / "logs"
    write_synthetic(SynthOptions(out=str(logs), rows=2_000, format=OutputFormat.tsv))
    report = tmp_path / "stats.json"
    args = ["stats", "data=criteo", f"data.train_path={logs}", "--json", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2,000 rows" in out and "C26" in out and "transformed mean" in out
    saved = json.loads(report.read_text())
    assert saved["rows"] == 2_000 and len(saved["features"]) == 39
    assert 0.03 < saved["features"][0]["missing_rate"] < 0.08  # synth's 5% missing values

    assert main(["stats", "data=criteo", "data.train_pth=x"]) == 2
    assert "Unknown config key 'data.train_pth'" in capsys.readouterr().err
    assert main(["stats", "data=criteo", f"data.train_path={tmp_path}/none*"]) == 2
    assert "matches no files" in capsys.readouterr().err
