"""One read path: statistics and the loader read, parse and transform rows alike."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from recsys.config import (
    DataConfig,
    DataFormat,
    DenseTransform,
    FeatureKind,
    FeatureSpec,
    TableSpec,
)
from recsys.data.featurize import DataError, featurize
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.source import SourceFormat
from recsys.data.stats import compute_stats
from recsys.schema import Schema, resolve_schema

ROWS = 500


def _data(path: Path, fmt: str = "parquet", on_bad_row: str = "fail", **dense) -> DataConfig:
    views = {"clip_min": 1.0, "clip_max": 50.0, "transform": DenseTransform.log1p} | dense
    return DataConfig(
        name="t",
        train_path=str(path),
        format=fmt,
        on_bad_row=on_bad_row,
        features={
            "user": FeatureSpec(kind=FeatureKind.id, seed=1),
            "views": FeatureSpec(kind=FeatureKind.dense, **views),
            "age": FeatureSpec(kind=FeatureKind.dense, clip_max=40.0),
        },
        tables={"user": TableSpec(num_buckets=100)},
    )


def _log(seed: int = 0) -> pa.Table:
    """Heavy-tailed counts (clipped at both ends) and ages, each with missing values."""
    rng = np.random.default_rng(seed)
    views = rng.exponential(20.0, ROWS)
    age = rng.normal(35.0, 10.0, ROWS)
    return pa.table(
        {
            "label": rng.integers(0, 2, ROWS),
            "user": pa.array([f"u{i}" for i in rng.integers(0, 50, ROWS)]),
            "views": pa.array(views, mask=rng.random(ROWS) < 0.15),
            "age": pa.array(age, mask=rng.random(ROWS) < 0.1),
        }
    )


def _write(tmp_path: Path, fmt: str, table: pa.Table) -> Path:
    if fmt == "parquet":
        path = tmp_path / "log.parquet"
        pq.write_table(table, path, row_group_size=128)
    else:
        path = tmp_path / "log.csv"
        pacsv.write_csv(table, path)  # nulls as empty fields
    return path


def _loader_rows(data: DataConfig, schema: Schema) -> tuple[np.ndarray, Counter]:
    """Dense inputs of every real row the loader yields, and the bad rows it counted."""
    options = LoaderOptions(batch_size=64, source=SourceFormat.from_config(data))
    dense, bad = [], Counter()
    for batch in StreamingDataset(data.train_path, schema, options):
        dense.append(batch.dense[batch.real_rows].numpy())
        bad.update(batch.bad_rows)
    return np.concatenate(dense).astype(np.float64), bad


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_suggested_mean_std_are_those_of_what_the_model_sees(tmp_path: Path, fmt: str) -> None:
    data = _data(_write(tmp_path, fmt, _log()), fmt)
    schema = resolve_schema(data, 8)  # mean 0, std 1: featurize's output is pre-standardization
    stats = {f.name: f.values for f in compute_stats(data, schema, data.train_path).features}
    seen, _ = _loader_rows(data, schema)
    assert seen.shape == (ROWS, 2)
    for i, name in enumerate(["views", "age"]):
        np.testing.assert_allclose(
            [stats[name]["suggested_mean"], stats[name]["suggested_std"]],
            [seen[:, i].mean(), seen[:, i].std()],
            rtol=1e-6,
        )
    # Missing values count as 0 (clipped up to 1 for views): not the present values' mean.
    assert abs(stats["views"]["suggested_mean"] - stats["views"]["transformed_mean"]) > 0.1
    assert stats["age"]["max"] > 40.0  # raw values beyond the clip are still reported raw

    # Standardizing with the suggested values gives the model mean 0, std 1.
    features = tuple(
        replace(f, mean=stats[f.name]["suggested_mean"], std=stats[f.name]["suggested_std"])
        if f.kind is FeatureKind.dense
        else f
        for f in schema.features
    )
    standardized = replace(schema, features=features)
    dense = featurize(_log(), standardized).dense.astype(np.float64)
    np.testing.assert_allclose(dense.mean(0), [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(dense.std(0), [1.0, 1.0], rtol=1e-5)


def _odd_values_csv(tmp_path: Path) -> Path:
    lines = ["label,user,views,age", "1,a,3,30", "0,b,4,nan", "1,NA,5,", "0,d,6,inf", "1,e,7,31"]
    lines += ["0,f,,-inf", "1,g,2,NaN", "0,null,8,45"]
    path = tmp_path / "odd.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_nan_inf_and_empty_dense_text_are_read_alike_by_stats_and_loader(tmp_path: Path) -> None:
    path = _odd_values_csv(tmp_path)
    data = _data(path, "csv", on_bad_row="skip")
    schema = resolve_schema(data, 8)
    stats = compute_stats(data, schema, str(path))
    seen, loader_bad = _loader_rows(data, schema)
    # "nan", "NaN", "inf", "-inf": non-finite dense values, dropped and counted by both.
    assert stats.bad_rows == dict(loader_bad) == {"non_finite_dense": 4}
    assert stats.rows == len(seen) == 4
    by_name = {f.name: f for f in stats.features}
    assert by_name["age"].missing == 1 and by_name["views"].missing == 0  # "" is missing
    assert by_name["user"].missing == 0  # and only "": "NA" and "null" are ids
    np.testing.assert_allclose(by_name["age"].values["suggested_mean"], seen[:, 1].mean())
    np.testing.assert_allclose(seen[:, 1], [30.0, 0.0, 31.0, 40.0])  # "" -> 0; 45 clipped

    fail = _data(path, "csv")
    with pytest.raises(DataError) as from_stats:
        compute_stats(fail, schema, str(path))
    with pytest.raises(DataError) as from_loader:
        _loader_rows(fail, schema)
    assert str(from_stats.value) == str(from_loader.value)
    assert "line 3" in str(from_stats.value) and "'nan'" in str(from_stats.value)


def test_stats_reads_with_the_configured_format_not_the_file_name(tmp_path: Path) -> None:
    table = _log()
    path = tmp_path / "log.parquet"  # tab separated text, whatever the name says
    pacsv.write_csv(table, path, pacsv.WriteOptions(delimiter="\t"))
    data = _data(path, DataFormat.tsv.value)
    stats = compute_stats(data, resolve_schema(data, 8), str(path))
    assert stats.rows == ROWS
    with pytest.raises(DataError, match="cannot be read as Parquet"):
        parquet = _data(path)
        compute_stats(parquet, resolve_schema(parquet, 8), str(path))


def test_the_shared_read_path_imports_no_torch() -> None:
    """The serving scorer reads through it on boxes without torchrec (or, here, torch)."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchrec'] = None; "
        "import recsys.data.reader, recsys.data.stats, recsys.export.manifest"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
