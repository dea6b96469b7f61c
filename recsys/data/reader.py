"""The one read path: a path, glob or URI -> work units -> checked Arrow blocks.

Training (`recsys.data.loader`), dataset statistics (`recsys.data.stats`) and the serving
scorer (`recsys.export.scorer`) all read rows here, so they agree on everything a row can be:
which files a path names, how Parquet row groups and text byte ranges are cut and read (CSV,
TSV, Criteo: `recsys.data.text`; libSVM: `recsys.data.libsvm`), how
numbers in text are parsed ("nan" and "inf" are non-finite dense values, "" is missing), and
which rows are bad (dropped and counted, or an error naming file, row and column, per
`data.on_bad_row`).

File discovery stays in `recsys.data.source` rather than `pyarrow.dataset`: the latter has no
globs, infers the type of hive partition values (the partition `day=007` would become the
integer 7, which hashes into another bucket) and reads the first file's schema while listing
(a corrupt file would fail there, before skip mode or a file-named error could apply).

Free of torch and torchrec: the scorer imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from recsys.config import DataFormat, FeatureKind
from recsys.data.libsvm import LibsvmUnitReader, check_layout
from recsys.data.rowcheck import BadRowLog, check_rows
from recsys.data.source import (
    SourceFormat,
    UnitError,
    WorkUnit,
    plan_parquet_units,
    read_parquet_unit,
    resolve_files,
)
from recsys.data.text import ROW_ID_STRIDE, TextUnitReader, check_columns, plan_text_units
from recsys.schema import Schema

ROW_ID_COLUMN = "__row_id"  # int64: unique, deterministic id of each row (see recsys.data.text)
UNIT_COLUMN = "__unit"  # int64: index of the work unit the row came from
DEFAULT_BLOCK_ROWS = 1 << 16  # Parquet rows per block (text blocks are cut by bytes)


class RowReader:
    """The rows under one path, read as training reads them.

    Plans the work units once (Parquet row groups, text byte ranges; see `recsys.data.source`);
    `unit_rows` reads one of them, `rows` all of them in order. Blocks come checked: label
    (with `with_labels`) and dense columns as float64, bad rows dropped and counted or failing,
    plus `ROW_ID_COLUMN` and `UNIT_COLUMN`.

    Args:
        path: file, folder (hive key=value partitions too), glob or pyarrow filesystem URI.
        fmt: how the files are laid out and what a bad row does.
        schema: the features to read; only their columns (and the label's) are read.
        with_labels: False for records without a label (scoring): the label is not read.
    """

    def __init__(self, path: str, fmt: SourceFormat, schema: Schema, with_labels: bool = True):
        self.path, self.fmt, self.schema, self.with_labels = str(path), fmt, schema, with_labels
        features = list(dict.fromkeys(f.column for f in schema.features))
        self.columns = schema.columns if with_labels else features
        self.id_columns = [f.column for f in schema.sparse_features if f.kind is FeatureKind.id]
        # A config mistake is found here, before listing any file.
        if fmt.format is DataFormat.libsvm:
            self.layout, self.kinds = check_layout(fmt, schema, with_labels)
        elif fmt.format is not DataFormat.parquet:
            check_columns(fmt, self.columns)
        self.fs, folder, files = resolve_files(self.path)
        if fmt.format is DataFormat.parquet:
            self.units = plan_parquet_units(self.fs, folder, files, fmt.skip_bad_rows)
        else:
            self.units = plan_text_units(self.fs, files, fmt.unit_bytes)

    def rows(self, bad: BadRowLog, block_rows: int = DEFAULT_BLOCK_ROWS) -> Iterator[pa.Table]:
        """Every unit's usable rows, in plan (file) order."""
        for unit in self.units:
            yield from self.unit_rows(unit, bad, block_rows)

    def unit_rows(
        self, unit: WorkUnit, bad: BadRowLog, block_rows: int = DEFAULT_BLOCK_ROWS
    ) -> Iterator[pa.Table]:
        """One unit's usable rows; a unit that cannot be used at all is skipped or fails."""
        try:
            yield from self._checked_rows(unit, bad, block_rows)
        except UnitError as e:
            if not bad.skip:
                raise
            rows = 1 if e.rows is None else e.rows
            bad.report(e.reason, rows, lambda: f"work unit {unit.index}", str(e))

    def _checked_rows(self, unit: WorkUnit, bad: BadRowLog, block_rows: int) -> Iterator[pa.Table]:
        where, blocks, first_id = self._reader(unit, block_rows)
        offset = 0
        try:
            for block in blocks(bad):
                n = block.num_rows
                ids = np.arange(first_id + offset, first_id + offset + n, dtype=np.int64)
                block = block.append_column(ROW_ID_COLUMN, pa.array(ids))
                block = block.append_column(UNIT_COLUMN, pa.array(np.full(n, unit.index)))
                checked = check_rows(
                    block, self.schema, _shifted(where, offset), bad, self.with_labels
                )
                offset += n
                if checked.num_rows:
                    yield checked
        except (OSError, pa.ArrowException) as e:
            raise UnitError(
                f"{unit.path}: cannot be read ({e}). Fix or remove it, or set "
                f"data.on_bad_row=skip.",
                reason="unreadable_unit",
            ) from e

    def _reader(
        self, unit: WorkUnit, block_rows: int
    ) -> tuple[Callable[[int], str], Callable[[BadRowLog], Iterator[pa.Table]], int]:
        """Where row k of the unit is, its raw blocks, and the row id of its first row."""
        if self.fmt.format is DataFormat.parquet:
            return (
                lambda k: f"{unit.path}, row {unit.file_row + k}",
                lambda bad: read_parquet_unit(
                    self.fs, unit, self.columns, block_rows, self.id_columns
                ),
                unit.first_row_id,
            )
        if self.fmt.format is DataFormat.libsvm:
            label = self.schema.label.column if self.with_labels else None
            reader = LibsvmUnitReader(self.fs, unit, self.fmt, self.layout, self.kinds, label)
        else:
            reader = TextUnitReader(self.fs, unit, self.fmt, self.columns)
        return reader.where, reader.blocks, unit.index * ROW_ID_STRIDE


def _shifted(where: Callable[[int], str], offset: int) -> Callable[[int], str]:
    """Where row k of a block is, for a block that starts at row `offset` of its unit."""
    return lambda k: where(offset + k)
