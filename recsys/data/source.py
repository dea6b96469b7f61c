"""Finding the rows: files on any pyarrow filesystem, cut into row-group work units.

A work unit (`Shard`) is one Parquet row group. Units, not rows, are dealt out to ranks and
loader workers, so each process reads only its own part of the data and memory stays bounded
by one row group plus the shuffle buffer, whatever the size of the files.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recsys.data.featurize import DataError

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Shard:
    """One unit of work: a row group of one file, with the global id of its first row."""

    path: str
    row_group: int
    num_rows: int
    first_row_id: int


def resolve_files(path: str) -> tuple[pafs.FileSystem, list[str]]:
    """Expand a file, folder, glob or URI (s3://, gs://, hdfs://, file://) to sorted files."""
    if "://" in path:
        fs, root = pafs.FileSystem.from_uri(path)
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(path)
    if _GLOB_CHARS & set(root):
        files = _glob(fs, root)
    else:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            files = [root]
        elif info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(root, recursive=True)
            files = [i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
        else:
            files = []
    files = sorted(f for f in files if not _is_hidden(f))
    if not files:
        raise DataError(
            f"data path '{path}' matches no files. Check data.train_path / data.eval_path."
        )
    return fs, files


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


def plan_shards(path: str) -> tuple[pafs.FileSystem, list[Shard]]:
    """All row groups of all files under `path`, in a fixed order, with global row ids."""
    fs, files = resolve_files(path)
    shards: list[Shard] = []
    next_row = 0
    for file in files:
        metadata = _parquet_metadata(fs, file)
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            shards.append(Shard(file, group, rows, next_row))
            next_row += rows
    return fs, shards


def _parquet_metadata(fs: pafs.FileSystem, file: str) -> pq.FileMetaData:
    try:
        with fs.open_input_file(file) as f:
            return pq.ParquetFile(f).metadata
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(
            f"{file}: cannot be read as Parquet ({e}). Is it truncated or another format?"
        ) from e


def assign_shards(shards: list[Shard], part: int, num_parts: int) -> list[Shard]:
    """Deal units round-robin: part p of n gets units p, p+n, p+2n, ... (disjoint, complete)."""
    return shards[part::num_parts]


def read_shard(
    fs: pafs.FileSystem, shard: Shard, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Stream one row group in record batches of at most `batch_rows` rows."""
    with fs.open_input_file(shard.path) as f:
        reader = pq.ParquetFile(f)
        missing = [c for c in columns if c not in reader.schema_arrow.names]
        if missing:
            raise DataError(
                f"{shard.path}: column(s) {missing} named by the data schema are not in the file "
                f"(it has {reader.schema_arrow.names}). Fix the feature's `column` in conf/data/."
            )
        yield from reader.iter_batches(
            batch_size=batch_rows, row_groups=[shard.row_group], columns=columns
        )
