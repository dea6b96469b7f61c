"""data_fingerprint: file listing, sizes, rows from Parquet footers, a digest that tracks changes."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from recsys.config import DataConfig, DataFormat, FeatureKind, FeatureSpec, TableSpec
from recsys.data.fingerprint import data_fingerprint
from recsys.data.source import DataError, SourceFormat
from recsys.schema import Schema, resolve_schema


def _schema() -> Schema:
    data = DataConfig(
        name="t",
        train_path="unused",
        features={
            "user": FeatureSpec(kind=FeatureKind.id, seed=1),
            "age": FeatureSpec(kind=FeatureKind.dense),
        },
        tables={"user": TableSpec(num_buckets=100)},
    )
    return resolve_schema(data, 8)


def _table(rows: int) -> pa.Table:
    return pa.table(
        {
            "label": [i % 2 for i in range(rows)],
            "user": [f"u{i}" for i in range(rows)],
            "age": [float(i) for i in range(rows)],
        }
    )


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Two Parquet files (several row groups) and a writer's marker file to be ignored."""
    root = tmp_path / "clicks"
    root.mkdir()
    pq.write_table(_table(300), root / "part-0.parquet", row_group_size=100)
    pq.write_table(_table(50), root / "part-1.parquet")
    (root / "_SUCCESS").write_text("")
    return root


def test_parquet_files_sizes_rows_and_schema(folder: Path) -> None:
    fp = data_fingerprint(str(folder), SourceFormat(), _schema())
    names = [Path(f["name"]).name for f in fp["files"]]
    assert names == ["part-0.parquet", "part-1.parquet"]
    sizes = [(folder / n).stat().st_size for n in names]
    assert [f["size"] for f in fp["files"]] == sizes
    assert fp["total_bytes"] == sum(sizes)
    assert fp["rows"] == 350  # from the footers
    assert fp["format"] == "parquet" and fp["path"] == str(folder)
    assert fp["schema"] == {"label": "double", "user": "string", "age": "double"}
    assert len(fp["digest"]) == 16


def test_digest_is_stable_and_follows_changes(folder: Path) -> None:
    first = data_fingerprint(str(folder), SourceFormat(), _schema())["digest"]
    assert data_fingerprint(str(folder), SourceFormat(), _schema())["digest"] == first
    stat = (folder / "part-1.parquet").stat()
    os.utime(folder / "part-1.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = data_fingerprint(str(folder), SourceFormat(), _schema())["digest"]
    assert touched != first
    pq.write_table(_table(5), folder / "part-2.parquet")
    grown = data_fingerprint(str(folder), SourceFormat(), _schema())
    assert grown["digest"] not in (first, touched) and grown["rows"] == 355


def test_text_rows_are_unknown_and_glob_works(tmp_path: Path) -> None:
    for i in range(2):
        pacsv.write_csv(_table(10), tmp_path / f"day{i}.csv")
    fp = data_fingerprint(
        str(tmp_path / "day*.csv"), SourceFormat(format=DataFormat.csv), _schema()
    )
    assert fp["rows"] is None  # counting text rows means reading every byte
    assert [Path(f["name"]).name for f in fp["files"]] == ["day0.csv", "day1.csv"]


def test_too_many_files_leaves_rows_unknown(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("recsys.data.fingerprint.MAX_FOOTERS", 1)
    fp = data_fingerprint(str(folder), SourceFormat(), _schema())
    assert fp["rows"] is None and len(fp["files"]) == 2


def test_corrupt_parquet_gives_unknown_rows(folder: Path) -> None:
    (folder / "part-9.parquet").write_bytes(b"not parquet")
    assert data_fingerprint(str(folder), SourceFormat(), _schema())["rows"] is None


def test_no_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="matches no files"):
        data_fingerprint(str(tmp_path / "missing"), SourceFormat(), _schema())
