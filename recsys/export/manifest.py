"""The serving export's layout and manifest.

    EXPORT_DIR/
      manifest.json                     everything a serving system needs to read the rest
      tables/<table>.npy                float32 [num_buckets, dim]; row b = hash bucket b
      tables/<table>__first_order.npy   float32 [num_buckets, 1]; per-bucket bias (if any)
      dense.pt                          torch state dict of the dense part (recsys.model.head)

The manifest carries the hash rule, every feature's column, seed and table, every table's
bucket count, dim, pooling and file checksum, and the dense part's shapes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.config import Schema
from recsys.hashing import HASH_FUNCTION, MISSING_BUCKET

FORMAT = "recsys-serving-export"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

HASH_RULE = {
    "function": HASH_FUNCTION,
    "input": "UTF-8 bytes of the id's canonical text: decimal for integers, the string itself",
    "bucket": "1 + hash(id, feature.seed) mod (table.num_buckets - 1)",
    "missing_bucket": MISSING_BUCKET,
    "missing": "null or empty string; inside id lists, missing entries are dropped",
}


class ExportError(ValueError):
    """An export cannot be used: incomplete, corrupted or of an unknown format."""


@dataclass(frozen=True)
class Manifest:
    schema: Schema
    tables: dict[
        str, dict[str, Any]
    ]  # name -> file, sha256, num_buckets, dim, pooling, first_order
    dense: dict[str, Any]  # file, sha256, architecture, head_config
    raw: dict[str, Any]

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
        return Manifest(Schema.from_dict(raw["schema"]), raw["tables"], raw["dense"], raw)

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
