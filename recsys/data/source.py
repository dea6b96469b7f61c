"""Finding the rows: files on any pyarrow filesystem, cut into work units.

A work unit is a Parquet row group, or a byte range of a text file (see `recsys.data.text`).
Units, not rows, are dealt out to ranks and loader workers, so each process reads only its own
part of the data and memory stays bounded by one unit's read-ahead plus the shuffle buffer,
whatever the size of the files. Every unit has a fixed index in the plan, the same on every
rank and for any number of ranks or workers: the loader's resumable position refers to it.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recsys.config import DataConfig, DataFormat, OnBadRow
from recsys.data.featurize import DataError

_GLOB_CHARS = set("*?[")
DEFAULT_UNIT_BYTES = 64 << 20


class UnitError(DataError):
    """A whole work unit cannot be used (unreadable file, missing column, empty file).

    Attributes:
        reason: the bad-row reason it is counted under when data.on_bad_row=skip.
        rows: how many rows the unit held, or None when that cannot be known.
    """

    def __init__(self, message: str, reason: str, rows: int | None = None):
        super().__init__(message)
        self.reason, self.rows = reason, rows


@dataclass(frozen=True)
class SourceFormat:
    """How to read the files: the data.format / header / columns / on_bad_row keys."""

    format: DataFormat = DataFormat.parquet
    header: bool = True
    columns: tuple[str, ...] | None = None
    on_bad_row: OnBadRow = OnBadRow.fail
    unit_bytes: int = DEFAULT_UNIT_BYTES  # text work unit size (snapped to line starts)

    @staticmethod
    def from_config(data: DataConfig) -> SourceFormat:
        return SourceFormat(
            format=DataFormat(data.format),
            header=bool(data.header),
            columns=tuple(data.columns) if data.columns else None,
            on_bad_row=OnBadRow(data.on_bad_row),
        )

    @property
    def skip_bad_rows(self) -> bool:
        return self.on_bad_row is OnBadRow.skip


@dataclass(frozen=True)
class WorkUnit:
    """One unit of work.

    Attributes:
        index: position in the plan; stable for a given set of files.
        path: the file.
        row_group: Parquet row group (-1 for text).
        num_rows: rows, when known before reading (Parquet), else None.
        first_row_id: Parquet: the global position of the unit's first row.
        file_row: Parquet: the row number of the unit's first row within its file.
        start, end: text: the nominal byte range; the reader snaps both to line starts.
        partition: hive partition values (key=value folders) for every row of the unit.
        error: why the file cannot be read (skip mode plans it, the reader reports it).
    """

    index: int
    path: str
    row_group: int = -1
    num_rows: int | None = None
    first_row_id: int = 0
    file_row: int = 0
    start: int = 0
    end: int = 0
    partition: tuple[tuple[str, str], ...] = field(default=())
    error: str | None = None


def resolve_files(path: str) -> tuple[pafs.FileSystem, str | None, list[str]]:
    """Expand a file, folder, glob or URI (s3://, gs://, hdfs://, file://) to sorted files.

    Returns the filesystem, the folder the path names (None for a file or a glob) and the files.
    """
    if "://" in path:
        fs, root = pafs.FileSystem.from_uri(path)
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(path)
    folder = None
    if _GLOB_CHARS & set(root):
        files = _glob(fs, root)
    else:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            files = [root]
        elif info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(root, recursive=True)
            files = [i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
            folder = root
        else:
            files = []
    files = sorted(f for f in files if not _is_hidden(f))
    if not files:
        raise DataError(
            f"data path '{path}' matches no files. Check data.train_path / data.eval_path."
        )
    return fs, folder, files


def _glob(fs: pafs.FileSystem, pattern: str) -> list[str]:
    if isinstance(fs, pafs.LocalFileSystem):
        return [f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)]
    base = pattern[: min(pattern.index(c) for c in _GLOB_CHARS if c in pattern)].rsplit("/", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return [
        i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern)
    ]


def _is_hidden(path: str) -> bool:
    # Writers leave markers such as _SUCCESS, _metadata and .crc files beside the data.
    return os.path.basename(path).startswith((".", "_"))


def hive_partition(file: str, folder: str | None) -> tuple[tuple[str, str], ...]:
    """`key=value` folders between the dataset folder and the file (hive-style partitioning)."""
    parent = os.path.dirname(file)
    if folder is not None:
        parent = os.path.relpath(parent, folder) if parent != folder else ""
    parts = [p.split("=", 1) for p in parent.split("/") if "=" in p]
    return tuple((k, v) for k, v in parts if k)


def plan_parquet_units(
    fs: pafs.FileSystem, folder: str | None, files: list[str], skip_unreadable: bool
) -> list[WorkUnit]:
    """All row groups of all files, in a fixed order, with global row ids."""
    units: list[WorkUnit] = []
    next_row = 0
    for file in files:
        partition = hive_partition(file, folder)
        try:
            metadata = _parquet_metadata(fs, file)
        except UnitError as e:
            if not skip_unreadable:
                raise
            units.append(WorkUnit(len(units), file, partition=partition, error=str(e)))
            continue
        file_row = 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            units.append(
                WorkUnit(len(units), file, group, rows, next_row, file_row, partition=partition)
            )
            next_row += rows
            file_row += rows
    return units


def _parquet_metadata(fs: pafs.FileSystem, file: str) -> pq.FileMetaData:
    try:
        with fs.open_input_file(file) as f:
            return pq.ParquetFile(f).metadata
    except (pa.ArrowInvalid, OSError) as e:
        raise UnitError(
            f"{file}: cannot be read as Parquet ({e}). Is it truncated, empty or another "
            f"format (set data.format)? Replace it, or set data.on_bad_row=skip to skip it.",
            reason="unreadable_unit",
        ) from e


def _parquet_blocks(
    fs: pafs.FileSystem,
    f: pa.NativeFile,
    unit: WorkUnit,
    metadata: pq.FileMetaData,
    columns: list[str],
    dictionary_columns: list[str],
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """Blocks of one row group, `dictionary_columns` read dictionary-encoded where that pays.

    A column whose ids repeat little (over WIDE_SHARE of them distinct: the Parquet writer
    likely gave up on its dictionary page and wrote the rest plain) is read plain: Arrow would
    otherwise rebuild a dictionary of the whole row group's ids, at a cost in memory that its
    saving in hashing does not repay.
    Which columns is decided per file (`_mostly_distinct`). On `make bench`'s Criteo logs
    (300k rows, 26 Zipf id columns of 10^6 ids, 30-45% distinct per row group) read whole by
    the loader: Arrow's peak 182 MiB and RSS +360 MiB with dictionaries, 95 MiB and +240 MiB
    plain, at the same rows/s.
    """
    wide = _WIDE_COLUMNS.get(unit.path)
    if wide is None:
        wide = _WIDE_COLUMNS[unit.path] = _mostly_distinct(f, metadata, unit, dictionary_columns)
    as_dictionary = [c for c in dictionary_columns if c not in wide]
    # pyarrow reads non-text columns named as dictionary columns as usual. Read as a dataset
    # fragment, not with ParquetFile.iter_batches: the same blocks for 22% less CPU (1.64 ->
    # 1.28 us a row for the whole loader on `make bench`'s 300k-row Criteo log, 17% less on
    # the distinct-id bench's 10^9 log; Arrow's peak 95 -> 113 MiB and 118 -> 87 MiB). The
    # fragment opens the file itself, so its read-ahead never outlives our handle.
    options = pads.ParquetReadOptions(dictionary_columns=as_dictionary)
    fragment = pads.ParquetFileFormat(read_options=options).make_fragment(
        unit.path, filesystem=fs, row_groups=[unit.row_group], file_size=f.size()
    )
    return fragment.to_batches(columns=columns, batch_size=batch_rows)


MIN_WIDE_DICTIONARY = 1 << 12  # ids; smaller dictionaries are always kept
PROBE_ROWS = 1 << 15  # rows whose distinct ids decide, per file
WIDE_SHARE = 0.25  # distinct ids / rows above which a column is read plain

# File -> its columns read plain: decided on the file's first row group read in this process,
# kept for its others (row groups of one file are written alike). A few bytes per file.
_WIDE_COLUMNS: dict[str, frozenset[str]] = {}


def _mostly_distinct(
    f: pa.NativeFile, metadata: pq.FileMetaData, unit: WorkUnit, columns: list[str]
) -> frozenset[str]:
    """The `columns` more than WIDE_SHARE of whose ids are distinct in the row group's first
    PROBE_ROWS rows, read plain: there a dictionary costs more memory than it saves hashing.

    Probed plain, because asking Arrow for a dictionary it cannot take from the file makes it
    build one over the whole row group's ids: reading a 131k-row group of 26 columns, 43% of
    whose ids were distinct, held 180 MiB of Arrow memory as dictionaries, 113 MiB plain.
    """
    if not columns:
        return frozenset()
    reader = pq.ParquetFile(f, metadata=metadata)
    probe = reader.iter_batches(PROBE_ROWS, row_groups=[unit.row_group], columns=columns)
    first = next(probe, None)
    if first is None:
        return frozenset()
    return frozenset(c for c in columns if _mostly_distinct_ids(first.column(c)))


def _mostly_distinct_ids(column: pa.Array) -> bool:
    # Small dictionaries stay whatever their share: their memory does not matter.
    distinct = pc.count_distinct(column).as_py()
    return distinct >= MIN_WIDE_DICTIONARY and distinct > WIDE_SHARE * len(column)


def assign_units(units: list[WorkUnit], part: int, num_parts: int) -> list[WorkUnit]:
    """Deal units round-robin: part p of n gets units p, p+n, p+2n, ... (disjoint, complete)."""
    return units[part::num_parts]


def read_parquet_unit(
    fs: pafs.FileSystem,
    unit: WorkUnit,
    columns: list[str],
    batch_rows: int,
    id_columns: Collection[str] = (),
) -> Iterator[pa.Table]:
    """Stream one row group in blocks of at most `batch_rows` rows, partition keys as columns.

    Text columns among `id_columns` are read dictionary-encoded, as Parquet stores them: that
    skips materializing every string (2x faster reads) and lets hashing see each distinct id
    once per block.
    """
    if unit.error is not None:
        raise UnitError(unit.error, reason="unreadable_unit")
    partition = dict(unit.partition)
    with fs.open_input_file(unit.path) as f:
        metadata = pq.read_metadata(f)  # the footer, read once and handed to the reader
        names = metadata.schema.to_arrow_schema().names
        in_file_ids = [c for c in id_columns if c in names]
        missing = [c for c in columns if c not in names and c not in partition]
        if missing:
            raise UnitError(
                f"{unit.path}: column(s) {missing} named by the data schema are not in the file "
                f"(it has {names}). Fix the feature's `column` in conf/data/, or set "
                f"data.on_bad_row=skip to skip such files.",
                reason="missing_column",
                rows=unit.num_rows,
            )
        in_file = [c for c in columns if c in names]
        blocks = _parquet_blocks(fs, f, unit, metadata, in_file, in_file_ids, batch_rows)
        for block in blocks:
            table = pa.Table.from_batches([block])
            for c in columns:
                if c not in names:
                    table = table.append_column(c, pa.repeat(partition[c], block.num_rows))
            yield table.select(columns)
