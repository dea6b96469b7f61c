"""CSV, TSV and the Criteo layout, streamed with pyarrow.csv over byte ranges.

A text file is cut into work units of `unit_bytes` (64 MiB by default). A unit owns the lines
that start inside its nominal range [start, end): the reader moves both ends forward to the
next line start, so neighbouring units meet exactly and every line is read once, whatever the
unit size. Compressed files (.gz, .bz2, ...) cannot be cut and are one unit each. Values may
not hold line breaks (quoted newlines would break the cut; Criteo and most logs have none).

Every column is read as text: ids stay ids ("021" is not 21), numbers are parsed by
`recsys.data.rowcheck`, row by row, so a bad value names its line. Empty fields are missing,
and only they: "NA" or "null" is an id like any other, "nan" and "inf" are non-finite numbers.
A Criteo line whose trailing empty fields were stripped (fewer than 40 fields) is padded with
missing values and counted (`recsys.data.text_lines.PaddedLines`; metric `data/rows_padded`);
too many fields is a bad row. libSVM text (`recsys.data.libsvm`) is read here line by line,
then decoded.

Row ids of text rows: `unit.index * 2**40 + k` for the k-th row parsed in the unit. They are
unique and deterministic (the same files give the same ids on any number of ranks or workers)
and sort in file order; they are not line numbers (blank and malformed lines take none).

Byte-level line handling (line starts, byte-range views, Criteo padding) lives in
`recsys.data.text_lines`; this module knows the formats, their columns and the work units.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from recsys.config import ConfigError, DataFormat
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat, UnitError, WorkUnit
from recsys.data.text_lines import (
    ByteRange,
    PaddedLines,
    count_line_breaks,
    last_line_start,
    line_start,
    read_line,
    skip_line,
)

ROW_ID_STRIDE = 1 << 40
CRITEO_COLUMNS = ("label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27)))
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4", ".br")


def is_compressed(path: str) -> bool:
    """A compressed file is one work unit, read whole: it cannot be cut by bytes."""
    return path.endswith(_COMPRESSED)


def delimiter(fmt: SourceFormat) -> str:
    """The field delimiter of the format (libsvm: whitespace, space or tab)."""
    if fmt.format is DataFormat.libsvm:
        return " "
    return "," if fmt.format is DataFormat.csv else "\t"


def fixed_columns(fmt: SourceFormat) -> tuple[str, ...] | None:
    """Column names when files have no header line (None: each file's header names them).

    libsvm: the `data.columns` entries as written (`name`, `name=I-J`, ...): the layout.
    """
    if fmt.format is DataFormat.criteo:
        return fmt.columns or CRITEO_COLUMNS
    if fmt.format is DataFormat.libsvm:
        return fmt.columns
    return None if fmt.header else fmt.columns


def check_columns(fmt: SourceFormat, columns: list[str]) -> None:
    """Before any file is read: the layout can name columns, and names the ones to read.

    (libsvm layouts are checked by `recsys.data.libsvm`, which knows the label and kinds.)
    """
    if fmt.format is not DataFormat.criteo and not fmt.header and not fmt.columns:
        raise ConfigError(
            f"data.format={fmt.format.value} with data.header=false needs data.columns: "
            f"the column names of the files, in order."
        )
    names = fixed_columns(fmt)
    missing = [c for c in columns if names is not None and c not in names]
    if missing:
        key = "data.columns" if fmt.columns else f"the {fmt.format.value} layout"
        raise ConfigError(
            f"column(s) {missing} named by the data schema are not in {key} {list(names)}. "
            f"Fix the features' `column` in conf/data/, or data.columns."
        )


def file_columns(fs: pafs.FileSystem, path: str, fmt: SourceFormat) -> tuple[str, ...]:
    """The column names of one text file: its layout's, or its header line's (none: ())."""
    fixed = fixed_columns(fmt)
    if fixed is not None:
        return tuple(fixed)
    line = _header_line(fs, path)
    return _header_names(line, fmt) if line.strip() else ()


def _header_line(fs: pafs.FileSystem, path: str) -> bytes:
    compression = "detect" if path.endswith(_COMPRESSED) else None
    with fs.open_input_stream(path, compression=compression) as f:
        return read_line(f)


def _header_names(line: bytes, fmt: SourceFormat) -> tuple[str, ...]:
    options = pacsv.ParseOptions(delimiter=delimiter(fmt))
    return tuple(pacsv.open_csv(io.BytesIO(line), parse_options=options).schema.names)


def plan_text_units(
    fs: pafs.FileSystem, files: list[str], unit_bytes: int, first_index: int = 0
) -> list[WorkUnit]:
    """Byte-range units of every file, in file order."""
    units: list[WorkUnit] = []
    for file in files:
        size = fs.get_file_info(file).size or 0
        if size == 0 or file.endswith(_COMPRESSED):
            ranges = [(0, size)]
        else:
            ranges = [(s, min(s + unit_bytes, size)) for s in range(0, size, unit_bytes)]
        for start, end in ranges:
            units.append(WorkUnit(first_index + len(units), file, start=start, end=end))
    return units


class TextUnitReader:
    """Reads one unit's rows as string columns; `where(k)` locates its k-th row for errors."""

    def __init__(
        self, fs: pafs.FileSystem, unit: WorkUnit, fmt: SourceFormat, columns: list[str]
    ) -> None:
        self.fs, self.unit, self.fmt, self.columns = fs, unit, fmt, columns
        self.compressed = unit.path.endswith(_COMPRESSED)
        self._first_line: int | None = None
        self._invalid: tuple | None = None  # fail mode: the malformed line pyarrow stopped at
        self._tail: int | None = None  # where a last line without line break starts
        self.data_start, self.data_end = 0, 0

    def blocks(self, bad: BadRowLog, block_bytes: int = 8 << 20) -> Iterator[pa.Table]:
        unit = self.unit
        if unit.start == 0 and unit.end == 0 and not self.compressed:
            raise UnitError(
                f"{unit.path}: the file is empty. Remove it, or set data.on_bad_row=skip.",
                reason="empty_file",
            )
        names, header_bytes = self._names()
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise UnitError(
                f"{unit.path}: column(s) {missing} named by the data schema are not in its "
                f"header {list(names)}. Fix the feature's `column` in conf/data/ (or "
                f"data.columns), or set data.on_bad_row=skip to skip such files.",
                reason="missing_column",
            )
        with self._open(header_bytes, bad) as stream:
            if self.fmt.format is DataFormat.criteo:
                stream = PaddedLines(stream, delimiter(self.fmt).encode(), len(names))
            try:
                # open_csv parses the first block already: its errors are caught here too.
                for block in pacsv.open_csv(stream, **self._csv_options(names, bad, block_bytes)):
                    if block.num_rows:
                        yield pa.Table.from_batches([block])
            except pa.ArrowInvalid as e:
                if bad.skip or self._invalid is None:
                    raise UnitError(
                        f"{unit.path}, bytes {self.data_start}-{self.data_end}: cannot be "
                        f"parsed ({e}). Fix or remove the file, or set data.on_bad_row=skip.",
                        reason="unreadable_unit",
                    ) from e
                bad.report(*self._invalid)  # fail mode: raises the DataError naming the line
            if isinstance(stream, PaddedLines) and stream.padded:
                bad.report_padded(stream.padded, lambda: self.unit.path, stream.describe())
        self._report_cut_line(bad)

    def _csv_options(self, names: tuple[str, ...], bad: BadRowLog, block_bytes: int) -> dict:
        return {
            "read_options": pacsv.ReadOptions(column_names=list(names), block_size=block_bytes),
            "parse_options": pacsv.ParseOptions(
                delimiter=delimiter(self.fmt),
                newlines_in_values=False,
                invalid_row_handler=self._on_invalid(bad, len(names)),
            ),
            "convert_options": pacsv.ConvertOptions(
                column_types={c: pa.string() for c in self.columns},
                include_columns=self.columns,
                strings_can_be_null=True,
                # Only "" is missing: pyarrow's default also nulls "NA", "null", "nan", ...,
                # which are real ids (and "nan" a non-finite number, as NaN is in Parquet).
                null_values=[""],
            ),
        }

    def where(self, k: int) -> str:
        return f"{self.unit.path}, line {self._line_of_data_start() + k}"

    # -- layout: header, byte range, truncated last line ------------------------------------

    def _names(self) -> tuple[tuple[str, ...], int]:
        fixed = fixed_columns(self.fmt)
        if fixed is not None:
            return tuple(fixed), 0
        line = _header_line(self.fs, self.unit.path)
        if not line.strip():
            raise UnitError(
                f"{self.unit.path}: no header line (data.header=true). Set data.header=false "
                f"and data.columns, or set data.on_bad_row=skip.",
                reason="empty_file",
            )
        return _header_names(line, self.fmt), len(line)

    def _open(self, header_bytes: int, bad: BadRowLog) -> ByteRange:
        if self.compressed:
            stream = self._raw_stream()
            if header_bytes:
                skip_line(stream)
            self.data_start, self.data_end = header_bytes, -1
            return ByteRange(stream, None)
        f = self.fs.open_input_file(self.unit.path)
        size = f.size()
        start = max(line_start(f, self.unit.start), header_bytes)
        end = max(line_start(f, self.unit.end) if self.unit.end < size else size, start)
        if end == size and size:
            tail = last_line_start(f, size)
            if tail is not None and tail >= start:
                self._tail, end = tail, tail  # a cut last line: reported, not parsed
        self.data_start, self.data_end = start, end
        f.seek(start)
        return ByteRange(f, end - start)

    def _raw_stream(self):
        compression = "detect" if self.compressed else None
        return self.fs.open_input_stream(self.unit.path, compression=compression)

    def _report_cut_line(self, bad: BadRowLog) -> None:
        if self._tail is None:
            return
        tail = self._tail
        with self.fs.open_input_file(self.unit.path) as f:
            f.seek(tail)
            text = f.read(200).decode("utf-8", "replace")
        bad.report(
            "truncated_line",
            1,
            lambda: f"{self.unit.path}, line {self._count_lines(tail) + 1}",
            f"the last line {text!r} does not end with a line break: the file looks cut short "
            f"(an interrupted copy or write?)",
        )

    # -- locating rows for error messages (only when one is reported) ------------------------

    def _on_invalid(self, bad: BadRowLog, expected: int) -> Callable:
        def handle(row) -> str:
            detail = (
                f"line {row.text[:200]!r} has {row.actual_columns} columns, expected {expected}"
            )
            args = ("wrong_column_count", 1, lambda: self._locate(row.text), detail)
            if not bad.skip:
                self._invalid = args  # raising inside pyarrow's callback would be swallowed
                return "error"
            bad.report(*args)
            return "skip"

        return handle

    def _locate(self, text: str) -> str:
        if self.compressed:
            return f"{self.unit.path} (compressed)"
        with self.fs.open_input_file(self.unit.path) as f:
            f.seek(self.data_start)
            data = f.read(self.data_end - self.data_start)
        # Whole lines only: the text may also occur inside an earlier line.
        data = b"\n" + data
        for end in (b"\n", b"\r\n"):
            at = data.find(b"\n" + text.encode() + end)
            if at >= 0:
                before = data.count(b"\n", 0, at + 1) - 1
                return f"{self.unit.path}, line {self._line_of_data_start() + before}"
        return f"{self.unit.path}, bytes {self.data_start}-{self.data_end}"

    def _line_of_data_start(self) -> int:
        if self._first_line is None:
            self._first_line = self._count_lines(self.data_start) + 1
        return self._first_line

    def _count_lines(self, end: int) -> int:
        """Line breaks in the file before byte `end` (read only when an error is reported)."""
        if self.compressed:
            return 1 if end else 0
        with self.fs.open_input_file(self.unit.path) as f:
            return count_line_breaks(f, end)
