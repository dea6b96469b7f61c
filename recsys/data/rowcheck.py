"""Bad input: find the rows that cannot be used, then stop with an error or drop and count them.

`data.on_bad_row=fail` (the default) stops at the first bad row with a `DataError` that names
the file, the row (line number for text), the column, the value and what to do. `skip` drops
the row, counts it by reason and logs the first few examples with file and row. The counts
travel with the batches to the trainer (`Batch.bad_rows`, `EpochProgress.bad_rows`), so a
shortened epoch is never silent.

Reasons: wrong_column_count, unparsable_number, bad_label, non_finite_dense, missing_column,
empty_file, truncated_line, unreadable_unit; libsvm text also bad_pair (a token that is not
`idx[:value]` or `field:idx:value`) and several_values (two pairs for a one-value column).

Not bad: a Criteo line that lacks trailing (empty) fields is read with them missing, and only
counted (`report_padded`, the metric `data/rows_padded`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.featurize import DataError
from recsys.schema import Schema

log = logging.getLogger(__name__)

Where = Callable[[int], str]  # row offset within the unit -> "file, line N" / "file, row N"
SKIP_HINT = "Fix the data, or set data.on_bad_row=skip to drop and count such rows."


class BadRowLog:
    """One stream's bad rows: raises (fail) or counts and logs the first few (skip)."""

    def __init__(self, skip: bool, max_examples: int = 5):
        self.skip, self.max_examples = skip, max_examples
        self.counts: Counter[str] = Counter()
        self.examples = 0
        self.padded = 0  # rows read with missing trailing fields added (not bad)
        self._padded_logged = False

    def report(self, reason: str, count: int, where: Callable[[], str], detail: str) -> None:
        """`count` rows are bad for `reason`; `where()` (called only if needed) says where."""
        if not self.skip:
            raise DataError(f"{where()}, {detail}. {SKIP_HINT}")
        self.counts[reason] += count
        if self.examples < self.max_examples:
            self.examples += 1
            log.warning("skipping bad row(s) (%s, %d): %s, %s", reason, count, where(), detail)

    def take(self) -> dict[str, int]:
        """The counts since the last call (the rows of the unit just finished)."""
        counts, self.counts = dict(self.counts), Counter()
        return counts

    def report_padded(self, count: int, where: Callable[[], str], detail: str) -> None:
        """`count` rows lacked trailing fields and were read with them missing (the first
        time, logged with `where()` and `detail`)."""
        self.padded += count
        if not self._padded_logged:
            self._padded_logged = True
            log.info("%s: %s (counted as data/rows_padded)", where(), detail)

    def take_padded(self) -> int:
        """Padded rows since the last call (the rows of the unit just finished)."""
        padded, self.padded = self.padded, 0
        return padded


def check_rows(
    table: pa.Table, schema: Schema, where: Where, bad: BadRowLog, with_labels: bool = True
) -> pa.Table:
    """Label and dense columns as float64, bad rows dropped (skip) or reported (fail).

    Text columns holding numbers are parsed here, so an unparsable value is found per row
    instead of failing a whole block. Null dense values are missing (featurize fills them).
    Without labels (scoring) the label column is neither needed nor checked.
    """
    rows = _Rows(table, where, bad)
    columns = _checked_labels(table, schema, rows) if with_labels else {}
    for feature in schema.dense_features:
        dense, unparsable = _to_float(table, feature.column)
        rows.drop(feature.column, unparsable, "unparsable_number", "is not a number")
        finite = np.isfinite(dense.fill_null(0.0).to_numpy(zero_copy_only=False))
        rows.drop(feature.column, ~finite, "non_finite_dense", _NON_FINITE)
        columns[feature.column] = dense
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table if rows.keep.all() else table.filter(pa.array(rows.keep))


def _checked_labels(table: pa.Table, schema: Schema, rows: _Rows) -> dict[str, pa.Array]:
    label = schema.label
    values, unparsable = _to_float(table, label.column)
    rows.drop(label.column, unparsable, "unparsable_number", "is not a number")
    numbers = values.fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    if label.threshold is None:
        wrong = ~np.isin(numbers, (0.0, 1.0))
        expected = "0 or 1 (set data.label.threshold to binarize)"
    else:
        wrong, expected = np.isnan(numbers), f"a number to compare with {label.threshold}"
    rows.drop(label.column, wrong, "bad_label", f"is not a usable label: expected {expected}")
    return {label.column: values}


_NON_FINITE = "is not finite; a dense value like it would turn the weights into NaN"


class _Rows:
    """The rows of one block still kept; `drop` reports and removes bad ones."""

    def __init__(self, table: pa.Table, where: Where, bad: BadRowLog):
        self.table, self.where, self.bad = table, where, bad
        self.keep = np.ones(table.num_rows, dtype=bool)

    def drop(self, column: str, mask: np.ndarray, reason: str, detail: str) -> None:
        mask = mask & self.keep  # a row is counted once, under its first reason
        if not mask.any():
            return
        rows = np.flatnonzero(mask)
        first = int(rows[0])
        value = self.table.column(column)[first].as_py()
        message = f"column '{column}': value {value!r} {detail}"
        self.bad.report(reason, len(rows), lambda: self.where(first), message)
        self.keep &= ~mask


def _to_float(table: pa.Table, name: str) -> tuple[pa.Array, np.ndarray]:
    """float64 values (nulls kept; unparsable -> null) and the mask of unparsable values."""
    column = table.column(name).combine_chunks()
    none = np.zeros(len(column), dtype=bool)
    if column.type == pa.float64():
        return column, none
    try:
        return pc.cast(column, pa.float64()), none
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(
            f"column '{name}' holds {column.type} values, not numbers; it cannot be a label or "
            f"a dense feature. Point the label / feature at another column in conf/data/."
        )
    # The slow path, only for blocks that hold a bad value: parse each string on its own.
    parsed = [_parse(s) for s in column.to_pylist()]
    bad = np.array([p is _BAD for p in parsed], dtype=bool)
    return pa.array([None if p is _BAD else p for p in parsed], pa.float64()), bad


_BAD = object()


def _parse(text: str | None) -> float | None | object:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return _BAD
