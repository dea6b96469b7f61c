"""data.format=libsvm with real files: positions, index ranges, libFFM fields, bad lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import (
    DataConfig,
    DataFormat,
    FeatureKind,
    FeatureSpec,
    LabelSpec,
    OnBadRow,
    TableSpec,
)
from recsys.data.featurize import DataError, featurize
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.reader import RowReader
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat
from recsys.export.manifest import source_entry, source_from_entry
from recsys.schema import resolve_schema

# Features by index range: user 0-99, tags 100-199 (a bag), price = the value of index 200.
RANGES = ["user=0-99", "tags=100-199", "price=200"]
LINES = [
    "1 7:1 101:1 105:1 200:2.5",
    "-1 8 200:0",  # value left out: 1; a dense 0 is a value
    "+1 9:1 150:0",  # an id pair with value 0 is absent
    "-1 110:1 7:1",  # pairs in any order; price absent (missing)
]
EXPECTED = {
    "label": [1.0, -1.0, 1.0, -1.0],
    "user": ["7", "8", "9", "7"],
    "tags": [["101", "105"], [], [], ["110"]],
    "price": [2.5, 0.0, None, None],
}


def _data(columns: list[str], path: Path, on_bad_row: OnBadRow = OnBadRow.fail) -> DataConfig:
    return DataConfig(
        name="svm",
        train_path=str(path),
        format=DataFormat.libsvm,
        columns=columns,
        on_bad_row=on_bad_row,
        label=LabelSpec(column="label", threshold=0.5),  # -1 / +1 labels
        features={
            "user": FeatureSpec(kind=FeatureKind.id, seed=1),
            "tags": FeatureSpec(kind=FeatureKind.id_list, seed=2),
            "price": FeatureSpec(kind=FeatureKind.dense),
        },
        tables={"user": TableSpec(num_buckets=64), "tags": TableSpec(num_buckets=64)},
    )


def _read(data: DataConfig, bad: BadRowLog | None = None) -> pa.Table:
    reader = RowReader(data.train_path, SourceFormat.from_config(data), resolve_schema(data, 16))
    return pa.concat_tables(reader.rows(bad or BadRowLog(skip=False)))


def test_index_ranges_make_ids_bags_and_values(tmp_path: Path) -> None:
    path = tmp_path / "train.libsvm"
    path.write_text("\n".join(LINES) + "\n")
    table = _read(_data(RANGES, path))
    assert {k: table.column(k).to_pylist() for k in EXPECTED} == EXPECTED


def test_positions_and_libffm_fields_read_alike(tmp_path: Path) -> None:
    by_position = tmp_path / "pos.txt"
    by_position.write_text("1 7:1 101:1 200:3\n0 8:1 102:1 200:4\n")
    fields = tmp_path / "ffm.txt"
    fields.write_text("1 0:7:1 1:101:1 2:200:3\n0 1:102:1 0:8:1 2:200:4\n")
    expected = {"user": ["7", "8"], "tags": [["101"], ["102"]], "price": [3.0, 4.0]}
    for path, columns in (
        (by_position, ["user", "tags", "price"]),
        (fields, ["user=field:0", "tags=field:1", "price=field:2"]),
    ):
        table = _read(_data(columns, path))
        assert {k: table.column(k).to_pylist() for k in expected} == expected, path.name


def test_hashes_like_the_same_ids_in_parquet(tmp_path: Path) -> None:
    """An index is the id: its decimal text hashes as the same int from Parquet would."""
    path = tmp_path / "a.txt"
    path.write_text("\n".join(LINES) + "\n")
    data = _data(RANGES, path)
    schema = resolve_schema(data, 16)
    from_text = featurize(_read(data), schema)
    parquet = tmp_path / "a.parquet"
    as_ints = {
        "label": EXPECTED["label"],
        "user": [int(u) for u in EXPECTED["user"]],
        "tags": [[int(t) for t in ts] for ts in EXPECTED["tags"]],
        "price": EXPECTED["price"],
    }
    pq.write_table(pa.table(as_ints), parquet)
    from_parquet = featurize(pq.read_table(parquet), schema)
    np.testing.assert_array_equal(from_text.labels, [1, 0, 1, 0])
    np.testing.assert_array_equal(from_text.labels, from_parquet.labels)
    np.testing.assert_array_equal(from_text.dense, from_parquet.dense)
    for key in ("user", "tags"):
        np.testing.assert_array_equal(from_text.ids[key], from_parquet.ids[key])
        np.testing.assert_array_equal(from_text.lengths[key], from_parquet.lengths[key])


BAD = [
    ("1 7:1 12x:1", "bad_pair", r"bad\.txt, line 3, token '12x:1' is not idx\[:value\]"),
    ("1 7:1 8:1", "several_values", r"line 3, column 'user' \(indices 0-99\) has 2 pairs"),
    ("1 7:1 200:1 200:2", "several_values", r"column 'price' \(index 200\) has 2 pairs"),
    ("1 1:2:3:4", "bad_pair", r"token '1:2:3:4'"),
    ("yes 7:1", "unparsable_number", r"bad\.txt, line 3, column 'label': value 'yes' is not"),
    ("1 7:1 200:inf", "non_finite_dense", r"bad\.txt, line 3, column 'price': value inf"),
]


@pytest.mark.parametrize(("line", "reason", "error"), BAD, ids=[b[1] + b[0] for b in BAD])
def test_bad_lines_fail_naming_the_line_or_are_counted(
    tmp_path: Path, line: str, reason: str, error: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"{LINES[0]}\n\n{line}\n{LINES[1]}\n")  # line 2 blank: not a row
    with pytest.raises(DataError, match=error):
        _read(_data(RANGES, path))
    bad = BadRowLog(skip=True)
    table = _read(_data(RANGES, path, OnBadRow.skip), bad)
    assert dict(bad.counts) == {reason: 1}
    assert table.column("user").to_pylist() == ["7", "8"]


def test_a_positional_line_with_too_many_pairs_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "pos.txt"
    path.write_text("1 7:1 101:1 200:3\n0 8:1 102:1 200:4 300:1\n")
    with pytest.raises(
        DataError, match=r"pos\.txt, line 2, line has 4 pairs, data.columns names 3"
    ):
        _read(_data(["user", "tags", "price"], path))


def test_every_line_once_across_small_units_and_workers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = [
        f"{rng.integers(0, 2)} {rng.integers(0, 100)}:1 {100 + rng.integers(0, 100)}:1 200:{i}"
        for i in range(500)
    ]
    (tmp_path / "a.svm").write_text("\n".join(lines[:300]) + "\n")
    (tmp_path / "b.svm").write_text("\n".join(lines[300:]) + "\n")
    data = _data(RANGES, tmp_path)
    schema = resolve_schema(data, 16)
    source = SourceFormat(DataFormat.libsvm, columns=tuple(RANGES), unit_bytes=997)
    prices = []
    for rank in range(2):
        dataset = StreamingDataset(
            str(tmp_path), schema, LoaderOptions(batch_size=64, source=source), rank, 2
        )
        assert len(dataset.units) > 4  # byte ranges cut inside the files
        for batch in dataset:
            prices += batch.dense[batch.real_rows, 0].tolist()  # price, standardized (0, 1)
    assert sorted(round(p) for p in prices) == list(range(500))


def test_the_export_manifest_records_the_layout(tmp_path: Path) -> None:
    """The scorer reads raw records by the manifest's `source`: the layout must survive."""
    source = SourceFormat.from_config(_data(RANGES, tmp_path))
    back = source_from_entry(source_entry(source))
    assert back.format is DataFormat.libsvm and back.columns == tuple(RANGES)


def test_rows_after_dropped_lines_are_located_by_line(tmp_path: Path, caplog) -> None:
    path = tmp_path / "bad.txt"
    # line 2 blank, line 3 a bad pair (dropped), line 5 a label that is not a number
    path.write_text(f"{LINES[0]}\n\n1 x:1\n{LINES[1]}\nno 7:1\n")
    bad = BadRowLog(skip=True)
    with caplog.at_level("WARNING"):
        _read(_data(RANGES, path, OnBadRow.skip), bad)
    assert dict(bad.counts) == {"bad_pair": 1, "unparsable_number": 1}
    assert "bad.txt, line 3, token 'x:1'" in caplog.text
    assert "bad.txt, line 5, column 'label': value 'no'" in caplog.text
