"""Delta exports: only the rows a model changed since a base export, chained day after day.

    DELTA_DIR/
      delta.json                   format, the base it applies to (path, sha256 of its
                                   manifest.json), the full export it reproduces (the same
                                   digest, and every file's sha256), per table the changed rows
      tables/<t>__rows.npy         int64 [k]: rows of <t> whose values, int8 row params or bias
                                   changed (sorted)
      tables/<t>.npy               those rows' values as the full export stores them
      tables/<t>__row_params.npy   int8 tables: those rows' (scale, bias)
      tables/<t>__first_order.npy  those rows' per-id biases
      tables/<t>__remap.npy        managed tables: the whole remap (ids holding rows; small)
      dense.pt                     the whole dense part (small)

A chain is a full export and deltas in order: delta 1's base is that export, delta k+1's base
is the export delta k reproduces. The scorer (`Scorer(base, deltas=[...])`) checks each link
(the digests, every file's checksum), patches the base's rows in memory, and with `verify`
checks the patched tables byte for byte against the checksums of the full export they stand
for. Needs numpy only (no torch, no torchrec).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.export.manifest import (
    MANIFEST_FILE,
    ExportError,
    Manifest,
    export_file,
    load_array,
    sha256_file,
)
from recsys.export.quantize import FloatRows, Int8Rows, Rows

DELTA_FORMAT = "recsys-serving-delta"
DELTA_VERSION = 1
DELTA_MANIFEST = "delta.json"
_ROWS = "__rows"
# A table's row-aligned files, by their key in a manifest table entry ("" : the entry itself).
_PARTS = {"values": "", "row_params": "__row_params", "first_order": "__first_order"}
_CHUNK_ROWS = 1 << 16  # rows compared at a time (memory-mapped): bounded memory per table


def export_digest(export_dir: Path) -> str:
    """An export's identity: the sha256 of its manifest.json, which holds every file's sha256."""
    return sha256_file(Path(export_dir) / MANIFEST_FILE)


def _parts(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A manifest table entry's row-aligned file entries, by part name."""
    found = {"values": entry}
    for part in ("row_params", "first_order"):
        if entry.get(part):
            found[part] = entry[part]
    return found


# ------------------------------------------------------------------------------------ writing


def write_delta(base_dir: Path, export_dir: Path, delta_dir: Path) -> Path:
    """The rows of `export_dir` that differ from `base_dir` (two full exports of one schema and
    table layout) into `delta_dir`, replaced if it exists; it appears whole or not at all."""
    base_dir, export_dir, delta_dir = Path(base_dir), Path(export_dir), Path(delta_dir)
    base, new = Manifest.load(base_dir), Manifest.load(export_dir)
    _check_same_layout(base, new, base_dir, export_dir)
    tmp = delta_dir.with_name(f"{delta_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "tables").mkdir(parents=True)
    try:
        tables = {
            name: _write_table(tmp, name, base_dir, export_dir, base.tables[name], entry)
            for name, entry in new.tables.items()
        }
        shutil.copyfile(export_dir / new.dense["file"], tmp / "dense.pt")
        manifest = {
            "format": DELTA_FORMAT,
            "format_version": DELTA_VERSION,
            "created_unix": int(time.time()),
            "schema_fingerprint": new.raw.get("schema_fingerprint"),
            "base": {"path": str(base_dir.resolve()), "sha256": export_digest(base_dir)},
            "result": {"path": str(export_dir.resolve()), "sha256": export_digest(export_dir)},
            "tables": tables,
            "dense": {"file": "dense.pt", "sha256": sha256_file(tmp / "dense.pt")},
        }
        (tmp / DELTA_MANIFEST).write_text(json.dumps(manifest, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(delta_dir, ignore_errors=True)
    tmp.rename(delta_dir)
    return delta_dir


def _check_same_layout(base: Manifest, new: Manifest, base_dir: Path, export_dir: Path) -> None:
    if base.raw.get("schema_fingerprint") != new.raw.get("schema_fingerprint"):
        raise ExportError(
            f"{export_dir} and {base_dir} were trained with different feature schemas: a "
            f"delta holds rows of the same tables only; publish {export_dir} as a full export."
        )
    for name, entry in new.tables.items():
        other = base.tables.get(name, {})
        if (other.get("num_buckets"), other.get("dim"), other.get("dtype")) != (
            entry["num_buckets"],
            entry["dim"],
            entry.get("dtype"),
        ):
            raise ExportError(
                f"table {name!r} of {export_dir} is not stored as in {base_dir} (rows, dim or "
                f"dtype changed): publish {export_dir} as a full export."
            )
        if set(_parts(entry)) != set(_parts(other)):
            raise ExportError(
                f"table {name!r}: {export_dir} and {base_dir} hold different files "
                f"(row params, first-order): publish {export_dir} as a full export."
            )


def _write_table(
    root: Path, name: str, base_dir: Path, export_dir: Path, old: dict, new: dict
) -> dict[str, Any]:
    """One table's changed rows (of every row-aligned file) and its remap; its delta entry."""
    parts = {
        part: (
            load_array(export_file(base_dir, _parts(old)[part]["file"]), mmap=True),
            load_array(export_file(export_dir, entry["file"]), mmap=True),
        )
        for part, entry in _parts(new).items()
    }
    rows = _changed_rows(list(parts.values()), new["num_buckets"])
    entry: dict[str, Any] = {"rows": _save(root, f"tables/{name}{_ROWS}.npy", rows)}
    entry["count"] = int(len(rows))
    for part, (_, values) in parts.items():
        saved = _save(root, f"tables/{name}{_PARTS[part]}.npy", np.asarray(values[rows]))
        entry[part] = saved | {"result_sha256": _parts(new)[part]["sha256"]}
    if new.get("remap"):
        remap = dict(new["remap"])
        shutil.copyfile(export_file(export_dir, remap["file"]), root / remap["file"])
        entry["remap"] = remap  # same file name, sha256, fallback rows, input block
    return entry


def _changed_rows(pairs: list[tuple[np.ndarray, np.ndarray]], num_rows: int) -> np.ndarray:
    """Rows where any of the (base, new) arrays differ, compared a chunk of rows at a time."""
    changed = []
    for start in range(0, num_rows, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, num_rows)
        differs = np.zeros(stop - start, dtype=bool)
        for old, new in pairs:
            a, b = np.asarray(old[start:stop]), np.asarray(new[start:stop])
            differs |= (a != b).reshape(stop - start, -1).any(axis=1)
        changed.append(np.flatnonzero(differs) + start)
    return np.concatenate(changed).astype(np.int64) if changed else np.zeros(0, np.int64)


def _save(root: Path, relative: str, array: np.ndarray) -> dict[str, Any]:
    np.save(root / relative, np.ascontiguousarray(array), allow_pickle=False)
    return {"file": relative, "sha256": sha256_file(root / relative)}


# ------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class Delta:
    path: Path
    raw: dict[str, Any]

    @staticmethod
    def load(path: Path) -> Delta:
        path = Path(path)
        file = path / DELTA_MANIFEST
        if not file.is_file():
            raise ExportError(f"{file} not found: is {path} a recsys delta export folder?")
        raw = json.loads(file.read_text())
        if raw.get("format") != DELTA_FORMAT or raw.get("format_version") != DELTA_VERSION:
            raise ExportError(
                f"{file}: format {raw.get('format')!r} v{raw.get('format_version')} is not "
                f"{DELTA_FORMAT!r} v{DELTA_VERSION}; write the delta again with this recsys."
            )
        return Delta(path, raw)

    def files(self) -> list[dict[str, Any]]:
        entries = [self.raw["dense"]]
        for table in self.raw["tables"].values():
            entries += [table["rows"]] + [table[p] for p in _PARTS if p in table]
            entries += [table["remap"]] if table.get("remap") else []
        return entries

    def verify(self) -> None:
        """Every file against its recorded sha256."""
        for entry in self.files():
            path = export_file(self.path, entry["file"])
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                raise ExportError(
                    f"{path}: missing or its checksum does not match {DELTA_MANIFEST}; the "
                    f"delta is incomplete or was edited. Copy it again, or write it again."
                )


@dataclass
class Patched:
    """A scorer's tables, biases, remap entries and dense file after a chain of deltas."""

    tables: dict[str, Rows]
    biases: dict[str, Rows]
    remaps: dict[str, tuple[Path, dict[str, Any]]]  # table -> (folder, remap entry)
    dense: Path


def apply_deltas(
    export_dir: Path,
    manifest: Manifest,
    deltas: Sequence[Path],
    tables: dict[str, Rows],
    biases: dict[str, Rows],
    verify: bool = True,
) -> Patched:
    """`tables` / `biases` (the base export's) with the deltas' rows written over, in order.

    Each delta must apply to what the chain holds so far: delta 1 to the base export (its
    manifest's sha256), delta k+1 to the export delta k reproduces. A delta out of order, of
    another base or edited is refused, naming it. With `verify`, every delta file's checksum
    is checked, and the patched tables are checked byte for byte against the full export
    the last delta reproduces.
    """
    chain = [Delta.load(Path(d)) for d in deltas]
    expected = export_digest(export_dir)
    patched = Patched(
        dict(tables),
        dict(biases),
        {n: (Path(export_dir), t["remap"]) for n, t in manifest.tables.items() if t.get("remap")},
        Path(export_dir) / manifest.dense["file"],
    )
    owned: set[tuple[str, str]] = set()  # (kind, table) already copied into memory
    for delta in chain:
        _check_link(delta, expected, manifest)
        if verify:
            delta.verify()
        for name, entry in delta.raw["tables"].items():
            _patch_table(delta, name, entry, patched, owned)
        patched.dense = export_file(delta.path, delta.raw["dense"]["file"])
        expected = delta.raw["result"]["sha256"]
    if verify and chain:
        _verify_result(chain[-1], patched)
    return patched


def _check_link(delta: Delta, expected: str, manifest: Manifest) -> None:
    base = delta.raw["base"]
    if base["sha256"] != expected:
        raise ExportError(
            f"{delta.path} applies to the export {base['path']} (manifest sha256 "
            f"{base['sha256'][:12]}...), not to what the chain holds so far (sha256 "
            f"{expected[:12]}...): give the base export, then its deltas in the order they "
            f"were written."
        )
    if delta.raw.get("schema_fingerprint") != manifest.raw.get("schema_fingerprint"):
        raise ExportError(f"{delta.path} was written for another feature schema than the base.")


def _patch_table(
    delta: Delta, name: str, entry: dict, patched: Patched, owned: set[tuple[str, str]]
) -> None:
    if name not in patched.tables:
        raise ExportError(f"{delta.path}: table {name!r} is not in the base export.")
    rows = load_array(export_file(delta.path, entry["rows"]["file"]))
    values = load_array(export_file(delta.path, entry["values"]["file"]))
    params = None
    if "row_params" in entry:
        params = load_array(export_file(delta.path, entry["row_params"]["file"]))
    patched.tables[name] = _patched_rows(patched.tables[name], rows, values, params, owned, name)
    if "first_order" in entry:
        bias = load_array(export_file(delta.path, entry["first_order"]["file"]))
        key = name + "__first_order"
        patched.biases[name] = _patched_rows(patched.biases[name], rows, bias, None, owned, key)
    if entry.get("remap"):
        patched.remaps[name] = (delta.path, entry["remap"])


def _patched_rows(
    rows: Rows,
    at: np.ndarray,
    values: np.ndarray,
    params: np.ndarray | None,
    owned: set[tuple[str, str]],
    key: str,
) -> Rows:
    """`rows` with rows `at` replaced; copied into memory once (the base stays memory-mapped
    and untouched), patched in place after that."""
    first = ("rows", key) not in owned
    owned.add(("rows", key))
    if isinstance(rows, Int8Rows):
        codes = np.array(rows.codes) if first else rows.codes
        scale = np.array(rows.row_params) if first else rows.row_params
        codes[at], scale[at] = values, params
        return Int8Rows(codes, scale)
    if not isinstance(rows, FloatRows):
        raise ExportError(f"table {key!r}: a delta patches only the export's own row formats.")
    table = np.array(rows.values) if first else rows.values
    table[at] = values
    return FloatRows(table)


def _verify_result(last: Delta, patched: Patched) -> None:
    """The patched tables are, byte for byte, the full export the last delta reproduces."""
    for name, entry in last.raw["tables"].items():
        arrays = _arrays(patched.tables[name])
        if "first_order" in entry:
            arrays["first_order"] = _arrays(patched.biases[name])["values"]
        for part, array in arrays.items():
            if npy_sha256(array) != entry[part]["result_sha256"]:
                raise ExportError(
                    f"table {name!r} ({part}) after the deltas up to {last.path} is not the "
                    f"export it stands for ({last.raw['result']['path']}): a delta is missing "
                    f"or was written from other exports. Publish a full export."
                )


def _arrays(rows: Rows) -> dict[str, np.ndarray]:
    if isinstance(rows, Int8Rows):
        return {"values": rows.codes, "row_params": rows.row_params}
    return {"values": rows.values}  # type: ignore[attr-defined]


def npy_sha256(array: np.ndarray) -> str:
    """sha256 of `array` as an `.npy` file (format 1.0 header, C order), as exports write it."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    digest = hashlib.sha256(header.getvalue())
    flat = array.reshape(-1).view(np.uint8)
    step = 1 << 24
    for start in range(0, len(flat), step):
        digest.update(flat[start : start + step])
    return digest.hexdigest()
