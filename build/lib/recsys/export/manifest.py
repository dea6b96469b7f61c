"""The serving export's layout and manifest.

    EXPORT_DIR/
      manifest.json                     everything a serving system needs to read the rest
      tables/<table>.npy                float32 [num_buckets, dim]; row b = hash bucket b
      tables/<table>__first_order.npy   float32 [num_buckets, 1]; per-bucket bias (if any)
      dense.pt                          torch state dict of the dense part (recsys.model.head)

The manifest carries the hash rule, every feature's column, seed and table, every table's
bucket count, dim, pooling and file checksum, the dense part's shapes, and how the training
records were laid out (`source`: format, header, columns, delimiter), which is how the scorer
reads raw records unless told otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.config import DataFormat
from recsys.data.source import SourceFormat
from recsys.data.text import delimiter, fixed_columns
from recsys.hashing import HASH_FUNCTION, MISSING_BUCKET
from recsys.schema import Schema

FORMAT = "recsys-serving-export"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

HASH_RULE = {
    "function": HASH_FUNCTION,
    "input": "UTF-8 bytes of the id's canonical text: decimal for integers, the string itself",
    "bucket": "b = 1 + hash(id, lookup.seed) mod (lookup.hash_buckets - 1)",
    "missing_bucket": MISSING_BUCKET,
    "missing": "null or empty string; inside id lists, missing entries are dropped",
    # Each feature reads its tables through the `lookups` listed in the manifest: one (plain
    # hashing), or two (double hashing, quotient-remainder) whose pooled vectors combine.
    "row": {
        "bucket": "b",
        "quotient": "1 + (b - 1) // lookup.divisor (0 if b = 0)",
        "remainder": "1 + (b - 1) % lookup.divisor (0 if b = 0)",
    },
    "combine": "a feature's lookups, each pooled from its table: summed, or multiplied "
    "elementwise (combine=product); first-order biases are always summed",
}


def lookup_entries(schema: Schema) -> list[dict[str, Any]]:
    """Every lookup with all it takes to reproduce it: column, seed, sizes, table, part."""
    columns = {f.name: f.column for f in schema.features}
    return [
        {
            "key": lk.key,
            "feature": lk.feature,
            "column": columns[lk.feature],
            "table": lk.table,
            "function": HASH_FUNCTION,
            "seed": lk.seed,
            "hash_buckets": lk.hash_buckets,
            "part": lk.part.value,
            "divisor": lk.divisor,
            "table_rows": schema.table(lk.table).num_buckets,
            "combine": lk.combine.value,
        }
        for lk in schema.lookups
    ]


class ExportError(ValueError):
    """An export cannot be used: incomplete, corrupted or of an unknown format."""


def source_entry(fmt: SourceFormat) -> dict[str, Any]:
    """How records are laid out: format; for text, whether a header line names the columns,
    the columns otherwise, and the field delimiter (derived from the format, for readers)."""
    if fmt.format is DataFormat.parquet:
        return {"format": fmt.format.value, "header": None, "columns": None, "delimiter": None}
    columns = fixed_columns(fmt)
    return {
        "format": fmt.format.value,
        "header": columns is None,
        "columns": None if columns is None else list(columns),
        "delimiter": delimiter(fmt),
    }


def source_from_entry(entry: dict[str, Any] | None) -> SourceFormat | None:
    """The `source` entry back as a SourceFormat; None when the manifest has none (written
    before exports recorded it)."""
    if not entry:
        return None
    try:
        fmt = DataFormat(entry["format"])
    except (KeyError, ValueError) as e:
        raise ExportError(
            f"{MANIFEST_FILE}: source format {entry.get('format')!r} is not one of "
            f"{[f.value for f in DataFormat]}."
        ) from e
    header = entry.get("header")
    columns = entry.get("columns")
    return SourceFormat(
        format=fmt,
        header=True if header is None else bool(header),
        columns=tuple(columns) if columns else None,
    )


@dataclass(frozen=True)
class Manifest:
    schema: Schema
    tables: dict[
        str, dict[str, Any]
    ]  # name -> file, sha256, num_buckets, dim, pooling, first_order
    dense: dict[str, Any]  # file, sha256, architecture, head_config
    raw: dict[str, Any]
    source: SourceFormat | None = None  # the training records' layout; None: not recorded

    @staticmethod
    def load(export_dir: Path) -> Manifest:
        path = Path(export_dir) / MANIFEST_FILE
        if not path.is_file():
            raise ExportError(f"{path} not found: is {export_dir} a recsys export folder?")
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
            raise ExportError(
                f"{path}: format {raw.get('format')!r} v{raw.get('format_version')} is not "
                f"{FORMAT!r} v{FORMAT_VERSION}; export it again with this version of recsys."
            )
        schema = Schema.from_dict(raw["schema"])
        source = source_from_entry(raw.get("source"))
        return Manifest(schema, raw["tables"], raw["dense"], raw, source)

    def verify(self, export_dir: Path) -> None:
        """Check every file against its recorded sha256."""
        entries = [self.dense] + list(self.tables.values())
        entries += [t["first_order"] for t in self.tables.values() if t.get("first_order")]
        for entry in entries:
            path = Path(export_dir) / entry["file"]
            if not path.is_file():
                raise ExportError(f"{path} is listed in the manifest but missing.")
            if sha256_file(path) != entry["sha256"]:
                raise ExportError(
                    f"{path}: checksum mismatch; the export is corrupted or was edited."
                )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
