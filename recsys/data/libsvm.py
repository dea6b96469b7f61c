"""libSVM / libFM / libFFM text (`data.format=libsvm`), decoded into the schema's columns.

Lines are read as text exactly as CSV is (`recsys.data.text`: byte-range units, compressed
files, a cut last line reported), one string per line, then decoded here with Arrow compute
over whole blocks: tokens split on whitespace; the first is the label (parsed and checked by
`recsys.data.rowcheck` like any label); each other token is `idx`, `idx:value` or
`field:idx:value`. `data.columns` (`recsys.schema.layout`) says which pairs make which
column; what a column holds follows the kind of the features that read it:

    id       the index of its one pair, as decimal text ("007" -> "7"), hashed like any id
    id_list  the indices of all its pairs, in line order (a bag)
    dense    the value of its one pair (absent: missing, i.e. 0 as libSVM means)

For ids a pair with value 0 is absent (libSVM stores zeros only by accident); other values are
not used (the model has no per-id weights). Lines of whitespace only are skipped like blank
lines. Bad lines (a token that is not a pair, two pairs where a column takes one, more pairs
than a positional layout has columns) are dropped and counted, or stop the run, per
data.on_bad_row, naming file, line and token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from recsys.config import FeatureKind
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat, WorkUnit
from recsys.data.text import TextUnitReader
from recsys.schema import Schema
from recsys.schema.layout import (
    LibsvmColumn,
    LibsvmLayout,
    check_libsvm_columns,
    parse_libsvm_layout,
)

LINE_COLUMN = "__line"
_NO_DELIMITER = "\x1f"  # the CSV parser sees one field per line (ASCII unit separator)


def check_layout(
    fmt: SourceFormat, schema: Schema, with_labels: bool
) -> tuple[LibsvmLayout, dict[str, FeatureKind]]:
    """`data.columns` parsed and checked against the schema, before any file is read; with
    what each feature column holds (one kind per column, checked)."""
    layout = parse_libsvm_layout(fmt.columns)
    kinds: dict[str, set[FeatureKind]] = {}
    for f in schema.features:
        kinds.setdefault(f.column, set()).add(f.kind)
    check_libsvm_columns(layout, schema.label.column if with_labels else None, kinds)
    return layout, {column: next(iter(found)) for column, found in kinds.items()}


class LibsvmUnitReader(TextUnitReader):
    """One unit's lines, decoded into the label column and the schema's feature columns."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        unit: WorkUnit,
        fmt: SourceFormat,
        layout: LibsvmLayout,
        kinds: Mapping[str, FeatureKind],
        label: str | None,
    ) -> None:
        super().__init__(fs, unit, fmt, [LINE_COLUMN])
        self.layout, self.kinds, self.label = layout, dict(kinds), label
        self._dropped = np.zeros(0, np.int64)  # lines of the unit not yielded as rows

    def blocks(self, bad: BadRowLog, block_bytes: int = 8 << 20) -> Iterator[pa.Table]:
        offset = 0  # lines of the unit before this block
        for raw in super().blocks(bad, block_bytes):
            lines = raw.column(LINE_COLUMN).combine_chunks()
            where = _shift(self.line_where, offset)
            table, kept = decode(lines, self.layout, self.kinds, self.label, where, bad)
            self._dropped = np.concatenate([self._dropped, offset + np.flatnonzero(~kept)])
            offset += raw.num_rows
            if table.num_rows:
                yield table

    def line_where(self, line: int) -> str:
        """Where the unit's line number `line` (0-based, blank lines counted) is."""
        return super().where(line)

    def where(self, k: int) -> str:
        """Where the k-th row yielded is: its line, skipping the lines dropped before it
        (blank, or bad and skipped), so later errors still name the right line."""
        line = k
        while (moved := k + int(np.searchsorted(self._dropped, line, side="right"))) != line:
            line = moved  # the least line with k kept lines before it
        return self.line_where(line)

    def _names(self) -> tuple[tuple[str, ...], int]:
        return (LINE_COLUMN,), 0

    def _csv_options(self, names: tuple[str, ...], bad: BadRowLog, block_bytes: int) -> dict:
        options = super()._csv_options(names, bad, block_bytes)
        parse = options["parse_options"]
        parse.delimiter, parse.quote_char, parse.escape_char = _NO_DELIMITER, False, False
        parse.ignore_empty_lines = False  # blank lines become null rows, dropped in decode:
        # then row k of a unit is its k-th line, and errors name the right line number
        return options


def _shift(where: Callable[[int], str], offset: int) -> Callable[[int], str]:
    return lambda k: where(offset + k)


def decode(
    lines: pa.Array,
    layout: LibsvmLayout,
    kinds: Mapping[str, FeatureKind],
    label: str | None,
    where: Callable[[int], str],
    bad: BadRowLog,
) -> tuple[pa.Table, np.ndarray]:
    """A block of lines -> a table of the label (text) and the `kinds` columns, with blank
    lines and bad ones dropped (bad ones reported); and the mask of the lines kept.
    `where(k)` locates line k of the block."""
    text = pc.utf8_trim_whitespace(lines)
    kept = np.flatnonzero(pc.fill_null(pc.not_equal(text, ""), False).to_numpy(False))
    pairs = _Pairs(text.take(pa.array(kept)))
    rows = _BadLines(pairs, lambda k: where(int(kept[k])), bad)
    rows.drop(pairs.bad, "bad_pair", lambda i: f"token {pairs.token(i)!r} {_NOT_A_PAIR}")
    if layout.positional:
        too_many = pairs.count_per_row(np.ones(len(pairs.row), bool)) > len(layout.columns)
        rows.drop_rows(too_many, "wrong_column_count", _too_many(layout, pairs))
    columns: dict[str, pa.Array] = {}
    if label is not None:
        columns[label] = pairs.label
    for name, kind in kinds.items():
        columns[name] = _column(layout.column(name), kind, pairs, rows)
    table = pa.table(columns)
    lines_kept = np.zeros(len(lines), bool)
    lines_kept[kept[rows.keep]] = True
    return (table if rows.keep.all() else table.filter(pa.array(rows.keep))), lines_kept


_NOT_A_PAIR = "is not idx[:value] or field:idx:value (integers idx, field; a number value)"


def _too_many(layout: LibsvmLayout, pairs: _Pairs) -> Callable[[int], str]:
    def detail(row: int) -> str:
        count = int(pairs.count_per_row(np.ones(len(pairs.row), bool))[row])
        return (
            f"line has {count} pairs, data.columns names {len(layout.columns)} positions "
            f"{list(layout.names)}"
        )

    return detail


class _Pairs:
    """The tokens of a block of non-blank lines: the label, then (field, index, value) pairs
    as flat numpy arrays with the row each comes from."""

    def __init__(self, text: pa.Array):
        tokens = pc.utf8_split_whitespace(text)
        self.num_rows = len(tokens)
        offsets = tokens.offsets.to_numpy()
        offsets = offsets - offsets[0]
        flat = tokens.flatten()
        lengths = np.diff(offsets)
        row_of = np.repeat(np.arange(self.num_rows), lengths)
        is_pair = np.ones(len(flat), bool)
        is_pair[offsets[:-1]] = False
        self.label = flat.take(pa.array(offsets[:-1]))  # every non-blank line has a token
        self.tokens = flat.filter(pa.array(is_pair))
        self.row = row_of[is_pair]
        self.position = (np.arange(len(flat)) - offsets[:-1][row_of])[is_pair] - 1
        self._parse()

    def _parse(self) -> None:
        parts = pc.split_pattern(self.tokens, ":")
        n = pc.list_value_length(parts).to_numpy(False)
        fixed = pc.list_slice(parts, 0, 3, return_fixed_size_list=True)
        e = [pc.list_element(fixed, i) for i in range(3)]
        three = pa.array(n == 3)
        idx = pc.if_else(three, e[1], e[0])
        value = pc.if_else(three, e[2], pc.if_else(pa.array(n == 2), e[1], "1"))
        self.index, bad_index = _parse(idx, np.int64)
        self.value, bad_value = _parse(value, np.float64)
        field, bad_field = _parse(pc.if_else(three, e[0], "-1"), np.int64)
        self.field = field
        self.bad = (n > 3) | bad_index | bad_value | bad_field

    def token(self, i: int) -> str:
        return str(self.tokens[i].as_py())

    def count_per_row(self, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.row[mask], minlength=self.num_rows)

    def index_text(self, mask: np.ndarray) -> pa.Array:
        """Decimal text of the indices of the masked pairs (ids hash by it)."""
        return pc.cast(pa.array(self.index[mask]), pa.string())


def _parse(text: pa.Array, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Numbers of a string array (0 where unparsable) and the mask of unparsable ones."""
    kind = pa.int64() if dtype is np.int64 else pa.float64()
    try:
        return pc.cast(text, kind).to_numpy(zero_copy_only=False), np.zeros(len(text), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # The slow path, only for blocks that hold a bad token: parse each value on its own.
    values, bad = np.zeros(len(text), dtype), np.zeros(len(text), bool)
    convert = int if dtype is np.int64 else float
    for i, value in enumerate(text.to_pylist()):
        try:
            values[i] = convert(value)
        except (TypeError, ValueError, OverflowError):
            bad[i] = True
    return values, bad


class _BadLines:
    """The lines of a block still kept; reports and removes bad ones (the first reason wins)."""

    def __init__(self, pairs: _Pairs, where: Callable[[int], str], bad: BadRowLog):
        self.pairs, self.where, self.bad = pairs, where, bad
        self.keep = np.ones(pairs.num_rows, dtype=bool)

    def drop(self, pair_mask: np.ndarray, reason: str, detail: Callable[[int], str]) -> None:
        """Drop the lines of the masked pairs; `detail(i)` describes pair i."""
        rows = np.zeros(self.pairs.num_rows, bool)
        rows[self.pairs.row[pair_mask]] = True
        rows &= self.keep
        if rows.any():
            first_row = int(np.flatnonzero(rows)[0])
            first_pair = int(np.flatnonzero(pair_mask & (self.pairs.row == first_row))[0])
            self._report(rows, reason, detail(first_pair))

    def drop_rows(self, mask: np.ndarray, reason: str, detail: Callable[[int], str]) -> None:
        rows = mask & self.keep
        if rows.any():
            self._report(rows, reason, detail(int(np.flatnonzero(rows)[0])))

    def _report(self, rows: np.ndarray, reason: str, detail: str) -> None:
        first = int(np.flatnonzero(rows)[0])
        self.bad.report(reason, int(rows.sum()), lambda: self.where(first), detail)
        self.keep &= ~rows


def _column(column: LibsvmColumn, kind: FeatureKind, pairs: _Pairs, rows: _BadLines) -> pa.Array:
    mask = _matches(column, pairs) & ~pairs.bad
    if kind is not FeatureKind.dense:
        mask &= pairs.value != 0
    if kind is FeatureKind.id_list:
        lengths = pairs.count_per_row(mask)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pairs.index_text(mask))
    counts = pairs.count_per_row(mask)
    rows.drop_rows(counts > 1, "several_values", _several(column, kind, counts))
    at = np.flatnonzero(mask)
    with_pair, first_of = np.unique(pairs.row[at], return_index=True)  # rows in line order
    first = np.full(pairs.num_rows, -1, np.int64)
    first[with_pair] = at[first_of]  # each row's first matching pair
    present = first >= 0
    if kind is FeatureKind.dense:
        values = np.where(present, pairs.value[np.maximum(first, 0)], 0.0)
        return pa.array(values, pa.float64(), mask=~present)
    text = pc.cast(pa.array(pairs.index[np.maximum(first, 0)]), pa.string())
    return pc.if_else(pa.array(present), text, pa.scalar(None, pa.string()))


def _matches(column: LibsvmColumn, pairs: _Pairs) -> np.ndarray:
    if column.position is not None:
        return pairs.position == column.position
    if column.field is not None:
        return pairs.field == column.field
    return (pairs.index >= column.first) & (pairs.index <= column.last)


def _several(column: LibsvmColumn, kind: FeatureKind, counts: np.ndarray) -> Callable[[int], str]:
    def detail(row: int) -> str:
        fix = "declare the feature kind=id_list" if kind is FeatureKind.id else "split the range"
        return (
            f"column '{column.name}' ({column.describe()}) has {int(counts[row])} pairs on the "
            f"line but a {kind.value} feature takes one; {fix} in conf/data/"
        )

    return detail
