"""What the raw columns of a data set hold, before any schema: the first pass of
`recsys.data.infer` (`recsys-data infer-schema`).

Every readable column is read through the loader's read path (`recsys.data.reader`) as an id
would be (text stays text, Parquet keeps its types) and profiled: missing values, whether all
values are numbers (a text number with a leading zero, "021", is a code, not a number),
integers or not, range and mean, the first few distinct values (is it 0/1?), how many values
hold a list delimiter, and the distinct count (HyperLogLog).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.config import ConfigError, DataConfig, DataFormat, FeatureKind, FeatureSpec, OnBadRow
from recsys.data.hll import HyperLogLog
from recsys.data.reader import RowReader
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat
from recsys.data.stats import first_rows, id_text
from recsys.data.text import file_columns
from recsys.schema import resolve_schema

LIST_DELIMITERS = ("|", ";")
_SMALL = 3  # distinct values kept exactly (enough to tell a 0/1 column)


class ColumnProfile:
    """One raw column. `type` is its Arrow type, or None for text to be parsed (CSV, TSV)."""

    def __init__(self, name: str, kind: pa.DataType | None):
        self.name, self.type = name, kind
        self.rows = self.missing = self.negatives = 0
        self.total = 0.0
        self.numeric = kind is None or is_number(kind)  # text: until a value is no number
        self.integral = kind is None or pa.types.is_integer(kind)
        self.low, self.high = math.inf, -math.inf
        self.small: set[str] | None = set()  # None once more than _SMALL distinct values
        self.delimited = dict.fromkeys(LIST_DELIMITERS, 0)
        self.hll = HyperLogLog()
        self.repeats = False  # some block of rows held a value twice (exact, per block)

    @property
    def is_list(self) -> bool:
        return self.type is not None and (
            pa.types.is_list(self.type) or pa.types.is_large_list(self.type)
        )

    @property
    def present(self) -> int:
        return self.rows - self.missing

    @property
    def mean(self) -> float:
        return self.total / self.present if self.present else math.nan

    @property
    def distinct(self) -> float:
        return self.hll.estimate()

    def zero_one(self) -> bool:
        """Every present value is 0 or 1 (as numbers)."""
        return self.numeric and self.small is not None and self.small <= {"0", "1", "0.0", "1.0"}

    def add(self, column: pa.ChunkedArray) -> None:
        if self.is_list:
            column = pc.list_flatten(column)
        text = id_text(column)
        present = pc.drop_null(text)
        self.rows += len(column)
        self.missing += text.null_count
        self.hll.add(present)
        if not self.repeats:  # a row key never repeats; most columns do in their first block
            self.repeats = pc.count_distinct(present).as_py() < len(present)
        if self.small is not None:
            self.small |= set(pc.unique(present).to_pylist()[: _SMALL + 1])
            self.small = self.small if len(self.small) <= _SMALL else None
        if self.numeric and self.type is None and _leading_zeros(present):
            self.numeric = self.integral = False  # "021": a code (zip, id), not a number
        if self.numeric:
            self._add_numbers(present if self.type is None else pc.drop_null(column))
        if self.type is None or pa.types.is_string(self.type):
            for d in LIST_DELIMITERS:
                self.delimited[d] += pc.sum(pc.match_substring(present, d)).as_py() or 0

    def _add_numbers(self, values: pa.ChunkedArray) -> None:
        try:
            v = np.asarray(pc.cast(values, pa.float64()).to_numpy(), dtype=np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            self.numeric = self.integral = False
            return
        if not np.isfinite(v).all():
            self.numeric = False  # a dense feature refuses non-finite values
            return
        if len(v):
            self.integral &= bool((v == np.floor(v)).all())
            self.low, self.high = min(self.low, v.min()), max(self.high, v.max())
            self.negatives += int((v < 0).sum())
            self.total += float(v.sum())


def is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _leading_zeros(text: pa.ChunkedArray) -> bool:
    return bool(pc.any(pc.match_substring_regex(text, r"^-?0\d")).as_py())


def column_types(fs, file: str, fmt: DataFormat) -> dict[str, pa.DataType | None]:
    """Column -> Arrow type of one file: Parquet's own; None (text to parse) for text."""
    if fmt is DataFormat.parquet:
        with fs.open_input_file(file) as f:
            schema = pq.read_schema(f)
        return {n: schema.field(n).type for n in schema.names}
    if fmt is DataFormat.libsvm:
        raise ConfigError(
            "infer-schema does not read libsvm text (its columns are index ranges or "
            "positions only you know): write the config by hand, see README 'libSVM text'."
        )
    names = file_columns(fs, file, SourceFormat(format=fmt))
    if not names:
        raise ConfigError(f"{file}: no header line names the columns; pass --format criteo?")
    return dict.fromkeys(names)


def readable(kind: pa.DataType | None) -> bool:
    """Columns a feature can read: text, numbers, booleans, lists of text or integers."""
    if kind is None or is_number(kind) or pa.types.is_boolean(kind):
        return True
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.types.is_string(kind.value_type) or pa.types.is_integer(kind.value_type)
    return pa.types.is_dictionary(kind) and pa.types.is_string(kind.value_type)


def profile_columns(
    path: str, fmt: DataFormat, types: dict[str, pa.DataType | None], max_rows: int | None
) -> tuple[dict[str, ColumnProfile], int]:
    """Profiles of the readable columns over the first `max_rows` rows; and the rows read.
    Rows a reader cannot use at all (wrong field count, ...) are skipped."""
    profiles = {c: ColumnProfile(c, t) for c, t in types.items() if readable(t)}
    features = {}
    for i, (column, profile) in enumerate(profiles.items()):
        kind = FeatureKind.id_list if profile.is_list else FeatureKind.id
        features[f"c{i}"] = FeatureSpec(kind=kind, column=column)
    data = DataConfig(name="profile", train_path=path, features=features, format=fmt)
    source = SourceFormat(format=fmt, on_bad_row=OnBadRow.skip)
    reader = RowReader(path, source, resolve_schema(data, 16), with_labels=False)
    rows = 0
    for block in first_rows(reader.rows(BadRowLog(skip=True)), max_rows):
        rows += block.num_rows
        for column, profile in profiles.items():
            profile.add(block.column(column))
    if not rows:
        raise ConfigError(f"{path}: no rows to infer a schema from.")
    return profiles, rows
