"""Bad input, with real files: fail names file, row, column and value; skip drops and counts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from recsys.compose import load_config
from recsys.config import DataFormat, OnBadRow
from recsys.data.featurize import DataError
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.progress import EpochProgress
from recsys.data.source import SourceFormat
from recsys.schema import resolve_schema
from tests.data.test_text import write_text
from tests.synthetic import make_click_log

ROWS = 60
AGE = make_click_log(1, 0).column_names.index("age")


@pytest.fixture
def schema():
    return resolve_schema(load_config([]).data, 16)


@dataclass(frozen=True)
class Case:
    """A bad file: how to make it, what skip counts, what fail says."""

    name: str
    fmt: DataFormat
    make: Callable[[Path], None]  # writes bad.<fmt> (and good rows) in the folder
    counts: dict[str, int]  # skip mode: bad rows by reason
    good_rows: int  # skip mode: rows that still reach training
    error: str  # fail mode: regex the DataError must match


def _csv_lines(folder: Path, edit: Callable[[list[str]], None]) -> None:
    """A good CSV of ROWS rows, with `edit` applied to its lines (line i+1 = lines[i])."""
    path = folder / "bad.csv"
    write_text(path, make_click_log(ROWS, seed=1))
    lines = path.read_text().split("\n")
    edit(lines)
    path.write_text("\n".join(lines))


def _set_field(line: int, field: int, value: str) -> Callable[[list[str]], None]:
    def edit(lines: list[str]) -> None:
        fields = lines[line - 1].split(",")
        fields[field] = value
        lines[line - 1] = ",".join(fields)

    return edit


def _drop_fields(lines: list[str]) -> None:
    lines[5] = lines[2].split(",", 3)[3]  # line 6: the end of line 3, 9 columns


def _cut_last_line(lines: list[str]) -> None:
    lines.pop()  # the final "" after the last line break: the file now ends mid-line
    lines[-1] = lines[-1][:7]


def _parquet(folder: Path, column: str | None = None, values=None, drop: str | None = None):
    table = make_click_log(ROWS, seed=1)
    if column is not None:
        i = table.schema.get_field_index(column)
        table = table.set_column(i, column, pa.array(values))
    if drop is not None:
        table = table.drop([drop])
    pq.write_table(table, folder / "bad.parquet")


def _with_good_file(make: Callable[[Path], None], fmt: DataFormat) -> Callable[[Path], None]:
    """The bad file plus a good one: the epoch goes on after a skipped unit."""

    def both(folder: Path) -> None:
        make(folder)
        good = make_click_log(ROWS, seed=2)
        if fmt is DataFormat.parquet:
            pq.write_table(good, folder / "good.parquet")
        else:
            write_text(folder / "good.csv", good)

    return both


def _labels(bad_at: int, value) -> list:
    labels = make_click_log(ROWS, seed=1)["label"].to_pylist()
    labels[bad_at] = value
    return labels


def _ages(bad: dict[int, object]) -> list:
    ages = [float(a) for a in make_click_log(ROWS, seed=1)["age"].to_pylist()]
    for row, value in bad.items():
        ages[row] = value
    return ages


P, C = DataFormat.parquet, DataFormat.csv
CASES = [
    Case("csv wrong column count", C, lambda d: _csv_lines(d, _drop_fields),
         {"wrong_column_count": 1}, ROWS - 1, r"bad\.csv, line 6, .*has 13 columns, expected 16"),
    Case("csv unparsable number", C, lambda d: _csv_lines(d, _set_field(8, AGE, "abc")),
         {"unparsable_number": 1}, ROWS - 1, r"bad\.csv, line 8, column 'age': value 'abc' is not a number"),
    Case("csv label outside 0/1", C, lambda d: _csv_lines(d, _set_field(4, 0, "2")),
         {"bad_label": 1}, ROWS - 1, r"bad\.csv, line 4, column 'label': value '2'.*expected 0 or 1"),
    Case("csv inf dense", C, lambda d: _csv_lines(d, _set_field(9, AGE, "inf")),
         {"non_finite_dense": 1}, ROWS - 1, r"bad\.csv, line 9, column 'age': value 'inf' is not finite"),
    Case("csv empty file", C, _with_good_file(lambda d: (d / "bad.csv").write_text(""), C),
         {"empty_file": 1}, ROWS, r"bad\.csv: the file is empty"),
    Case("csv cut last line", C, lambda d: _csv_lines(d, _cut_last_line),
         {"truncated_line": 1}, ROWS - 1, rf"bad\.csv, line {ROWS + 1}, the last line .* looks cut short"),
    Case("csv missing column", C, _with_good_file(
            lambda d: write_text(d / "bad.csv", make_click_log(ROWS, 1).drop(["occupation"])), C),
         {"missing_column": 1}, ROWS, r"bad\.csv: column\(s\) \['occupation'\].*not in its header"),
    Case("parquet label outside 0/1", P, lambda d: _parquet(d, "label", _labels(17, 5)),
         {"bad_label": 1}, ROWS - 1, r"bad\.parquet, row 17, column 'label': value 5"),
    Case("parquet nan and inf dense", P,
         lambda d: _parquet(d, "age", _ages({3: float("nan"), 40: float("inf")})),
         {"non_finite_dense": 2}, ROWS - 2, r"bad\.parquet, row 3, column 'age': value nan"),
    Case("parquet unparsable number", P,
         lambda d: _parquet(d, "age", [str(a) for a in _ages({11: "x1"})]),
         {"unparsable_number": 1}, ROWS - 1, r"bad\.parquet, row 11, column 'age': value 'x1'"),
    Case("parquet empty file", P, _with_good_file(lambda d: (d / "bad.parquet").write_bytes(b""), P),
         {"unreadable_unit": 1}, ROWS, r"bad\.parquet: cannot be read as Parquet"),
    Case("parquet truncated", P, _with_good_file(lambda d: _truncate(d / "bad.parquet"), P),
         {"unreadable_unit": 1}, ROWS, r"bad\.parquet: cannot be read as Parquet"),
    Case("parquet missing column", P, _with_good_file(lambda d: _parquet(d, drop="zip_prefix"), P),
         {"missing_column": ROWS}, ROWS, r"bad\.parquet: column\(s\) \['zip_prefix'\]"),
]  # fmt: skip


def _truncate(path: Path) -> None:
    pq.write_table(make_click_log(ROWS, seed=1), path)
    path.write_bytes(path.read_bytes()[:300])


def _dataset(folder: Path, schema, case: Case, mode: OnBadRow) -> StreamingDataset:
    source = SourceFormat(case.fmt, on_bad_row=mode)
    return StreamingDataset(str(folder), schema, LoaderOptions(batch_size=16, source=source))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fail_names_file_row_column_and_value(tmp_path: Path, schema, case: Case) -> None:
    case.make(tmp_path)
    with pytest.raises(DataError, match=case.error) as error:
        list(_dataset(tmp_path, schema, case, OnBadRow.fail))
    assert "data.on_bad_row=skip" in str(error.value)  # and what to do


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_skip_drops_counts_and_logs(
    tmp_path: Path, schema, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    case.make(tmp_path)
    dataset = _dataset(tmp_path, schema, case, OnBadRow.skip)
    progress = dataset.new_progress()
    with caplog.at_level(logging.WARNING):
        for batch in dataset:
            progress.record(batch)
    assert progress.bad_rows == case.counts
    assert progress.rows == case.good_rows  # never a silently shortened epoch
    assert "bad" in caplog.text and str(tmp_path) in caplog.text  # first examples: file and row


def test_counts_cross_worker_processes_and_survive_resume(tmp_path: Path, schema) -> None:
    """Counts ride on the batches through DataLoader workers; a resumed epoch re-reading an
    open unit does not count its bad rows twice."""
    ages = _ages({i: float("nan") for i in range(0, ROWS, 7)})  # 9 bad rows
    table = make_click_log(ROWS, seed=1)
    table = table.set_column(table.schema.get_field_index("age"), "age", pa.array(ages))
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=25)
    source = SourceFormat(on_bad_row=OnBadRow.skip)
    options = LoaderOptions(batch_size=8, source=source)
    whole = EpochProgress()
    for batch in DataLoader(StreamingDataset(str(tmp_path), schema, options), None, num_workers=2):
        whole.record(batch)
    assert whole.bad_rows == {"non_finite_dense": 9} and whole.rows == ROWS - 9
    partial = EpochProgress()
    for batch in list(StreamingDataset(str(tmp_path), schema, options))[:2]:
        partial.record(batch)
    resumed = StreamingDataset(str(tmp_path), schema, options)
    resumed.set_epoch(0, resume=partial)
    for batch in resumed:
        partial.record(batch)
    assert partial.bad_rows == whole.bad_rows and partial.rows == whole.rows
    assert np.isfinite(np.array(ages)).sum() == whole.rows
