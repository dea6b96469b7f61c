"""A cheap fingerprint of a dataset: which files, how big, how many rows, and a digest.

Cheap at any size: files are listed, never read, except Parquet footers for row counts (the
footer holds them). Text rows would need a full read, so their count is left as None. The
digest covers file names, sizes and modification times, so it changes when any file is added,
removed, rewritten or touched, and stays put across runs over the same files.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recsys.config import DataFormat, FeatureKind
from recsys.data.source import SourceFormat, resolve_files
from recsys.schema import Schema

#: Hex digits of the sha256 digest kept (64 bits: plenty to tell datasets apart).
DIGEST_CHARS = 16
#: Above this many Parquet files the row count is left unknown: a footer read per file is one
#: request each on object stores, too slow to pay at the start of every run.
MAX_FOOTERS = 1000


def data_fingerprint(path: str, source_format: SourceFormat, schema: Schema) -> dict[str, Any]:
    """Fingerprint the files under `path` (file, folder, glob or URI).

    Args:
        path: what `data.train_path` / `data.eval_path` / `data.valid_path` names.
        source_format: how the files are laid out (Parquet or text).
        schema: the features read; gives the column types recorded with the fingerprint.

    Returns:
        `{"path", "format", "files": [{"name", "size"}], "total_bytes", "rows" (None for
        text and for more than `MAX_FOOTERS` Parquet files), "digest", "schema": {column:
        type}}`.

    Raises:
        DataError: `path` matches no files.
    """
    fs, _, files = resolve_files(path)
    infos = fs.get_file_info(files)
    listing = [{"name": i.path, "size": i.size} for i in infos]
    stamp = [(i.path, i.size, i.mtime_ns) for i in infos]
    digest = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:DIGEST_CHARS]
    fmt = DataFormat(source_format.format)
    return {
        "path": str(path),
        "format": fmt.value,
        "files": listing,
        "total_bytes": sum(i.size for i in infos),
        "rows": _parquet_rows(fs, files) if fmt is DataFormat.parquet else None,
        "digest": digest,
        "schema": column_types(schema),
    }


def column_types(schema: Schema) -> dict[str, str]:
    """Source column -> MLflow colspec type: the label and dense columns "double", ids "string"."""
    types = {schema.label.column: "double"}
    for feature in schema.features:
        types.setdefault(
            feature.column, "double" if feature.kind is FeatureKind.dense else "string"
        )
    return types


def _parquet_rows(fs: pafs.FileSystem, files: list[str]) -> int | None:
    """Total rows from the Parquet footers; None when a footer cannot be read or too many."""
    if len(files) > MAX_FOOTERS:
        return None
    total = 0
    for file in files:
        try:
            with fs.open_input_file(file) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        except (OSError, ValueError):  # pa.ArrowInvalid is a ValueError
            return None  # an unreadable file is the reader's to report, with its own message
    return total
