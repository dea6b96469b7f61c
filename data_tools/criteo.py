"""Raw Criteo TSV -> Parquet, streamed with bounded memory.

The Criteo Display Advertising layout: one row per line, tab separated, no header, 40 fields:
`label` (0/1), `I1`..`I13` (integer counts), `C1`..`C26` (categorical ids, 8 hex digits in the
raw logs); an empty field is a missing value, and so are trailing fields a tool stripped
(a line of fewer fields is padded, as the loader does: `recsys.data.text_lines.PaddedLines`).
`convert_criteo` reads it with
`pyarrow.csv.open_csv` block by block (gzip and other compressions are detected from the file
extension) and writes row groups of a fixed size with `ParquetWriter`, so memory is one row
group plus one read block whatever the size of the input. Each output appears atomically: it
is written under a hidden temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_tools.arrow_io import RowStream, atomic_path
from recsys.config import ConfigError
from recsys.data.featurize import DataError
from recsys.data.source import resolve_files
from recsys.data.text import CRITEO_COLUMNS
from recsys.data.text_lines import PaddedLines

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = CRITEO_COLUMNS  # the layout the loader reads for data.format=criteo
LABEL = COLUMNS[0]
DENSE_COLUMNS: tuple[str, ...] = COLUMNS[1:14]  # I1..I13
CATEGORICAL_COLUMNS: tuple[str, ...] = COLUMNS[14:]  # C1..C26

ARROW_SCHEMA = pa.schema(
    [pa.field(LABEL, pa.int8())]
    + [pa.field(c, pa.int64()) for c in DENSE_COLUMNS]
    + [pa.field(c, pa.string()) for c in CATEGORICAL_COLUMNS]
)
"""Parquet columns of a converted (or synthetic) Criteo log: missing values are nulls."""


class BadLinePolicy(StrEnum):
    fail = "fail"  # stop at the first line with too many fields, naming it
    skip = "skip"  # drop such lines, count them and log the first few


@dataclass(frozen=True)
class ConvertOptions:
    """How `convert_criteo` reads and writes.

    Attributes:
        row_group_rows: rows per Parquet row group (the loader's unit of work).
        block_bytes: bytes of text parsed at a time (memory is about this plus a row group).
        on_bad_line: what to do with a line of more than 40 fields (one with fewer, its
            trailing empty fields stripped by some tool, is read with them missing).
        compression: Parquet codec.
    """

    row_group_rows: int = 1 << 18
    block_bytes: int = 16 << 20
    on_bad_line: BadLinePolicy = BadLinePolicy.fail
    compression: str = "zstd"

    def __post_init__(self) -> None:
        if self.row_group_rows < 1 or self.block_bytes < 1:
            raise ConfigError(
                f"row_group_rows={self.row_group_rows} and block_bytes={self.block_bytes} "
                "must both be >= 1."
            )


@dataclass
class ConvertReport:
    inputs: list[str]
    outputs: list[str]
    rows: int = 0
    skipped_lines: int = 0
    padded_lines: int = 0  # lines with fewer than 40 fields: the missing trailing ones added
    skipped_examples: list[str] = field(default_factory=list)  # "file:line: why"


def output_paths(inputs: list[str], dst: str) -> list[str]:
    """DST ending in .parquet: one file for all inputs; otherwise a folder, one file per input."""
    if dst.endswith(".parquet"):
        return [dst]
    names = [_stem(p) + ".parquet" for p in inputs]
    if len(set(names)) != len(names):
        raise DataError(
            f"inputs {inputs} would map to the same output names in '{dst}'; convert them "
            "separately or give a single DST file ending in .parquet."
        )
    return [os.path.join(dst, n) for n in names]


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".gz", ".bz2", ".zst", ".lz4"):
        name = name.removesuffix(suffix)
    for suffix in (".tsv", ".txt", ".csv"):
        name = name.removesuffix(suffix)
    return name


def convert_criteo(src: str, dst: str, options: ConvertOptions | None = None) -> ConvertReport:
    """Convert raw Criteo TSV (a file, folder, glob or URI; may be compressed) to Parquet.

    Args:
        src: where the TSV files are.
        dst: a `.parquet` file (all inputs concatenated in name order) or a folder.
        options: row-group size, read block size, bad-line policy, codec.

    Returns:
        What was read and written; `rows` counts the rows written.

    Raises:
        DataError: no input files, a line with the wrong field count (under `fail`), a value
            that is not an integer where one is expected; the message names file and line.
    """
    options = options or ConvertOptions()
    try:
        fs, _, inputs = resolve_files(src)
    except DataError as e:
        raise DataError(f"criteo-to-parquet: SRC '{src}' matches no files ({e}).") from e
    outputs = output_paths(inputs, dst)
    report = ConvertReport(inputs=inputs, outputs=outputs)
    groups = [inputs] if len(outputs) == 1 else [[p] for p in inputs]
    for out, files in zip(outputs, groups, strict=True):
        rows = _write_parquet(fs, files, out, options, report)
        logger.info("wrote %s rows to %s", f"{rows:,}", out)
        report.rows += rows
    return report


def _write_parquet(
    fs: pafs.FileSystem,
    files: list[str],
    out: str,
    options: ConvertOptions,
    report: ConvertReport,
) -> int:
    rows = 0
    stream = RowStream(_tables(fs, files, options, report))
    with (
        atomic_path(out) as tmp,
        pq.ParquetWriter(tmp, ARROW_SCHEMA, compression=options.compression) as writer,
    ):
        while (table := stream.take(options.row_group_rows)) is not None:
            writer.write_table(table, row_group_size=table.num_rows)
            rows += table.num_rows
    return rows


def _tables(
    fs: pafs.FileSystem, files: list[str], options: ConvertOptions, report: ConvertReport
) -> Iterator[pa.Table]:
    for path in files:
        for batch in _read_tsv(fs, path, options, report):
            yield pa.Table.from_batches([batch])


def _read_tsv(
    fs: pafs.FileSystem, path: str, options: ConvertOptions, report: ConvertReport
) -> Iterator[pa.RecordBatch]:
    bad: list[str] = []  # Arrow swallows exceptions raised in the handler: remember, then raise

    def on_invalid(row: pacsv.InvalidRow) -> str:
        where = f"{path}:{row.number}"
        why = f"{row.actual_columns} fields instead of {row.expected_columns}"
        if options.on_bad_line is BadLinePolicy.fail:
            bad.append(
                f"{where}: line has {why} (Criteo layout: label, I1..I13, C1..C26, tab "
                f"separated): {row.text[:120]!r}. Fix or drop the line, or pass --skip-bad-lines."
            )
            return "error"
        report.skipped_lines += 1
        if len(report.skipped_examples) < 5:
            report.skipped_examples.append(f"{where}: {why}")
            logger.warning("skipping %s: %s", where, why)
        return "skip"

    try:
        with fs.open_input_stream(path, compression="detect") as stream:
            # Lines whose trailing empty fields were stripped get them back (as missing).
            padded = PaddedLines(stream, b"\t", len(COLUMNS))
            reader = _open_reader(padded, options, on_invalid)
            if reader is None:
                logger.warning("%s is empty: no rows", path)
                return
            yield from _batches(reader, path)
            if padded.padded:
                report.padded_lines += padded.padded
                logger.info("%s: %s", path, padded.describe())
    except (pa.ArrowInvalid, OSError) as e:
        if bad:
            raise DataError(bad[0]) from None
        raise DataError(_conversion_error(fs, path, e)) from e


def _open_reader(
    stream: PaddedLines, options: ConvertOptions, on_invalid
) -> pacsv.CSVStreamingReader | None:
    # use_threads=False: only then does Arrow know the line number of an invalid row.
    read = pacsv.ReadOptions(
        column_names=list(COLUMNS), block_size=options.block_bytes, use_threads=False
    )
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=on_invalid)
    convert = pacsv.ConvertOptions(
        column_types=ARROW_SCHEMA, strings_can_be_null=True, null_values=[""]
    )
    try:
        return pacsv.open_csv(stream, read, parse, convert)
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            return None
        raise


def _batches(reader: pacsv.CSVStreamingReader, path: str) -> Iterator[pa.RecordBatch]:
    rows = 0
    for batch in reader:
        if batch.column(0).null_count:
            row = rows + int(pc.index(pc.is_null(batch.column(0)), True).as_py())
            raise DataError(
                f"{path}:{row + 1}: the label (field 1) is empty; every row needs a 0/1 label."
            )
        rows += batch.num_rows
        yield batch


def _conversion_error(fs: pafs.FileSystem, path: str, error: Exception) -> str:
    """Name the line and field of the first value that is not an integer where one must be."""
    found = _first_non_integer(fs, path)
    if found is None:
        return f"{path}: cannot be read as Criteo TSV ({error}). Is it truncated or another format?"
    line, column, value = found
    return (
        f"{path}:{line}, field '{column}': {value!r} is not an integer (label and I1..I13 must be "
        "integers or empty). Fix the line or drop it."
    )


def _first_non_integer(fs: pafs.FileSystem, path: str) -> tuple[int, str, str] | None:
    """Re-read the file as text (only after a failure) to find the offending value."""
    columns = [LABEL, *DENSE_COLUMNS]
    read = pacsv.ReadOptions(column_names=list(COLUMNS), use_threads=False)
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=_skip)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in COLUMNS}, include_columns=columns
    )
    line = 0
    try:
        with fs.open_input_stream(path, compression="detect") as stream:
            for batch in pacsv.open_csv(stream, read, parse, convert):
                for column in columns:
                    text = batch.column(column)
                    ok = pc.or_(pc.equal(text, ""), pc.match_substring_regex(text, r"^-?\d+$"))
                    if not pc.all(ok).as_py():
                        row = int(pc.index(ok, False).as_py())
                        return line + row + 1, column, text[row].as_py()
                line += batch.num_rows
    except (pa.ArrowInvalid, OSError):
        return None
    return None


def _skip(row: pacsv.InvalidRow) -> str:
    return "skip"
