"""The serving export's layout and manifest.

    EXPORT_DIR/
      manifest.json                     everything a serving system needs to read the rest
      tables/<table>.npy                [num_buckets, dim]; row b = hash bucket b; float32,
                                        float16 or uint8 codes by the table's `dtype`
      tables/<table>__row_params.npy    float32 [num_buckets, 2]: per-row scale, bias (int8 only)
      tables/<table>__first_order.npy   [num_buckets, 1]; per-bucket bias (if any); float32, or
                                        float16 when the tables are fp16 / int8
      tables/<table>__remap.npy         int64 [n, 2]: managed tables only: (id, row) of every id
                                        holding a row, sorted by id (`Remap`)
      dense.pt                          torch state dict of the dense part (recsys.model.head)

The manifest carries the hash rule, every feature's column, seed and table, every table's
bucket count, dim, pooling and file checksum, the dense part's shapes, and how the training
records were laid out (`source`: format, header, columns, delimiter), which is how the scorer
reads raw records unless told otherwise.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.config import DataFormat
from recsys.data.source import SourceFormat
from recsys.data.text import delimiter, fixed_columns
from recsys.hashing import HASH_FUNCTION, MISSING_BUCKET
from recsys.schema import Schema

if TYPE_CHECKING:  # the read path (stats, the scorer's records) runs without torch
    import torch

FORMAT = "recsys-serving-export"
# v2: tables may be stored as fp16 or row-wise int8 (`dtype`, `row_params`; recsys.export.
# quantize); a v1 reader would take int8 codes for weights, so it must refuse v2. v1 exports
# (float32 tables, no `dtype`) are v2 fp32 ones and still read.
# v3: managed tables (`hashing: managed`) map ids to rows through a `remap` entry; a v2 reader
# would read ids as rows, so exports with a managed table are v3, others stay v2.
FORMAT_VERSION = 3
PLAIN_FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2, 3)
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
        # hashing=managed: hash_buckets is the remap's input size (2**32 + 1 by default)
        "managed": "remap.file holds (b, row) pairs sorted by b: b's row if listed, else "
        "remap.fallback_rows[b // remap.input_block] (one fallback row per row shard)",
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
        raw = _read_json(path)
        check_format(raw, path)
        schema = Schema.from_dict(raw["schema"])
        source = source_from_entry(raw.get("source"))
        return Manifest(schema, raw["tables"], raw["dense"], raw, source)

    def verify(self, export_dir: Path) -> None:
        """Check every file against its recorded sha256 (and that it lies inside the export)."""
        entries = [self.dense] + [f for t in self.tables.values() for f in table_files(t)]
        for entry in entries:
            path = export_file(export_dir, entry["file"])
            if not path.is_file():
                raise ExportError(
                    f"{path} is listed in {MANIFEST_FILE} but missing: copy the whole export "
                    f"folder again, or export again from the run's checkpoint."
                )
            if sha256_file(path) != entry["sha256"]:
                raise ExportError(
                    f"{path}: checksum mismatch with {MANIFEST_FILE}; the file is corrupted or "
                    f"was edited, so it is not used. Copy the export again from its source "
                    f"(the MLflow run's artifacts), or export again from the run's checkpoint."
                )


def table_files(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file entry (`file`, `sha256`) of one table: values, int8 row params, biases."""
    return [entry] + [entry[k] for k in ("row_params", "first_order", "remap") if entry.get(k)]


@dataclass(frozen=True)
class Remap:
    """A managed table's id -> row map as trained (TorchRec MCH state at export time).

    `ids` (sorted) hold rows of their own, `rows[i]` being ids[i]'s; any other id reads the
    fallback row of the row shard owning its input range: fallback_rows[id // input_block].
    """

    ids: np.ndarray  # int64 [n], sorted
    rows: np.ndarray  # int64 [n]
    fallback_rows: np.ndarray  # int64 [row shards]
    input_block: int

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Rows of hashed ids (int64, in [0, input_hash_size))."""
        ids = np.asarray(ids, dtype=np.int64)
        fallback = self.fallback_rows[
            np.minimum(ids // self.input_block, len(self.fallback_rows) - 1)
        ]
        if len(self.ids) == 0:
            return fallback
        at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[at] == ids, self.rows[at], fallback)

    @staticmethod
    def load(export_dir: Path, entry: dict[str, Any]) -> Remap:
        pairs = load_array(export_file(export_dir, entry["file"]))
        if pairs.dtype != np.int64 or pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ExportError(
                f"{entry['file']}: a remap is int64 [n, 2], not {pairs.dtype} {pairs.shape}; "
                f"the export was edited or is corrupted. Export again."
            )
        return Remap(
            np.ascontiguousarray(pairs[:, 0]),
            np.ascontiguousarray(pairs[:, 1]),
            np.asarray(entry["fallback_rows"], dtype=np.int64),
            int(entry["input_block"]),
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(
            f"{path} is not valid JSON ({e}): the manifest is corrupted; copy the export again."
        ) from e
    if not isinstance(raw, dict):
        raise ExportError(f"{path} is not a manifest (a JSON object); copy the export again.")
    return raw


def check_format(raw: dict[str, Any], path: Path) -> None:
    """Read only exports of this format and a version it knows; say what to do with others."""
    fmt, version = raw.get("format"), raw.get("format_version")
    if fmt != FORMAT:
        raise ExportError(
            f"{path}: format {fmt!r} is not {FORMAT!r}; point at a recsys serving export."
        )
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ExportError(
            f"{path}: export format v{version} is newer than this recsys reads "
            f"(v{FORMAT_VERSION}); upgrade recsys to the version that exported it."
        )
    if version not in READABLE_VERSIONS:
        raise ExportError(
            f"{path}: export format v{version} is older than this recsys reads "
            f"(v{FORMAT_VERSION}); export it again from the run's checkpoint with this recsys."
        )


def export_file(export_dir: Path, name: str) -> Path:
    """A file the manifest names, refused if it points outside the export folder (an edited
    manifest must not make a reader open, say, ../../secrets)."""
    root = Path(export_dir).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ExportError(
            f"{Path(export_dir) / MANIFEST_FILE}: file {name!r} lies outside the export "
            f"folder; the manifest was edited. Copy the export again from its source."
        )
    return Path(export_dir) / name


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """A table file, never unpickled (allow_pickle=False): an object array is refused."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ExportError(
            f"{path} is not a plain numeric .npy table ({e}); the export was edited or is "
            f"corrupted. Copy the export again from its source, or export again."
        ) from e


def load_dense(path: Path) -> dict[str, torch.Tensor]:
    """The dense part's state dict with `weights_only=True`: tensors only, no code runs."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        refused = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        raise ExportError(
            f"{path} holds something other than tensors and was not loaded (nothing in it ran"
            f"{'; ' + refused[0] if refused else ''}); the export was edited or is corrupted. "
            f"Copy the export again from its source, or export again."
        ) from e


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
