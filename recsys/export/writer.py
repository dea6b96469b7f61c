"""Writing the serving export from a trained model's weights, whole or sharded over ranks."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys import __version__
from recsys.config import TableDtype
from recsys.data.source import SourceFormat
from recsys.export.manifest import (
    FORMAT,
    FORMAT_VERSION,
    HASH_RULE,
    MANIFEST_FILE,
    PLAIN_FORMAT_VERSION,
    Manifest,
    lookup_entries,
    sha256_file,
    source_entry,
)
from recsys.export.measure import DEFAULT_MEASURE_ROWS, fp32_bias_sum_path, measure_quantization
from recsys.export.quantize import ROW_PARAMS_LAYOUT, Rows, encode, first_order_dtype, load_rows
from recsys.export.tables import (
    ExportGroup,
    TableShards,
    convert_file,
    create_npy,
    npy_layout,
    write_blocks,
)
from recsys.model.layout import FIRST_ORDER_SUFFIX, REMAP_EMPTY_SLOT, ModelWeights
from recsys.model.registry import AnyHeadConfig
from recsys.schema import ResolvedTable, Schema

log = logging.getLogger(__name__)


def write_export(
    export_dir: Path,
    schema: Schema,
    head_config: AnyHeadConfig,
    weights: ModelWeights,
    provenance: dict[str, Any] | None = None,
    source: SourceFormat | None = None,
    table_dtype: TableDtype = TableDtype.fp32,
    measure_on: str | None = None,
    measure_rows: int = DEFAULT_MEASURE_ROWS,
    group: ExportGroup | None = None,
) -> Path:
    """Write tables, dense part and manifest; the folder appears whole or not at all.

    With a `group` of several ranks this is a collective: every rank writes the table rows it
    holds (`weights.tables` / `first_order` as `TableShards`), then the group's writer rank
    encodes, checksums and publishes; no rank holds a whole table (recsys.export.tables).

    Args:
        export_dir: destination; replaced if it exists.
        schema: the feature schema the model was trained with.
        head_config: the head (dense part): its architecture and shapes.
        weights: the model's weights by role (`WeightLayout.split`): whole tables (tensors or
            arrays) or this rank's `TableShards`; the dense part is read on the writer only.
        provenance: where the model came from (MLflow run id, eval metrics), kept as is.
        source: how the training records were laid out (data.format, header, columns); the
            scorer reads raw records the same way. None: not recorded (the scorer then falls
            back to its rule for old exports).
        table_dtype: how tables are stored (fp32, fp16, row-wise int8; recsys.export.quantize).
        measure_on: labelled records (data.eval_path, read as `source`) on which a fp16 / int8
            export measures what storing it so changed: scores of up to `measure_rows` of them
            with these tables vs the float32 weights, recorded under the manifest's
            `quantization` key. None: not measured.
        group: the ranks writing together; None: this process alone.
    """
    group = group or ExportGroup()
    export_dir, table_dtype = Path(export_dir), TableDtype(table_dtype)
    plan = _Files(export_dir.with_name(f"{export_dir.name}.tmp-{group.token}"), table_dtype)
    try:
        segments = _write_rows(plan, schema, weights, head_config.first_order, group)
        if not group.is_writer:
            return export_dir
        files = _finish_files(plan, schema, head_config, weights, segments)
        manifest = _describe(schema, provenance, source) | files
        if table_dtype is not TableDtype.fp32 and measure_on is not None and measure_rows > 0:
            write_manifest(plan.root, manifest)  # the scorer that measures reads it
            manifest["quantization"] = measure_quantization(
                plan.root, plan.fp32_dir, measure_on, source, measure_rows
            )
        write_manifest(plan.root, manifest)
        shutil.rmtree(plan.fp32_dir)
    except BaseException:
        if group.is_writer:
            shutil.rmtree(plan.root, ignore_errors=True)  # the folder appears whole or not at all
        raise
    shutil.rmtree(export_dir, ignore_errors=True)
    plan.root.rename(export_dir)
    log.info(
        "export written to %s (%d tables, %s, %.1f MB of tables)",
        export_dir,
        len(manifest["tables"]),
        table_dtype.value,
        manifest["table_bytes"] / 1e6,
    )
    return export_dir


@dataclass(frozen=True)
class _Files:
    """Where an export's files go while it is written. Float32 rows land in `tables/` when
    stored so, else in `fp32/` (read back to encode them, and the measure's reference);
    first-order tables always land in `fp32/` ([n, width], summed to [n, 1] for serving)."""

    root: Path
    dtype: TableDtype

    @property
    def fp32_dir(self) -> Path:
        return self.root / "fp32"

    def rows(self, table: str) -> Path:
        folder = self.root / "tables" if self.dtype is TableDtype.fp32 else self.fp32_dir
        return folder / f"{table}.npy"

    def bias_rows(self, table: str) -> Path:
        return self.fp32_dir / f"{table}{FIRST_ORDER_SUFFIX}.npy"

    def remap_slots(self, table: str) -> Path:
        return self.fp32_dir / f"{table}{_REMAP}_slots.npy"


_REMAP = "__remap"


def _write_rows(
    plan: _Files, schema: Schema, weights: ModelWeights, first_order: bool, group: ExportGroup
) -> dict[str, list[int]]:
    """Every rank's table rows (float32) and remap slots (int64 (id, row) pairs) into the
    files the writer rank made at full size. Returns each managed table's row shard bounds."""
    float32, int64 = np.dtype(np.float32), np.dtype(np.int64)
    files = {
        plan.rows(t.name): (TableShards.of(weights.tables[t.name]), float32) for t in schema.tables
    }
    if first_order:
        files |= {
            plan.bias_rows(t.name): (TableShards.of(weights.first_order[t.name]), float32)
            for t in schema.tables
        }
    segments = {}
    for t in schema.managed_tables:
        slots, segments[t.name] = _remap_slots(*weights.remaps[t.name])
        files[plan.remap_slots(t.name)] = (slots, int64)
    if group.is_writer:
        shutil.rmtree(plan.root, ignore_errors=True)
        for folder in (plan.root / "tables", plan.fp32_dir):
            folder.mkdir(parents=True)
        for path, (shards, dtype) in files.items():
            create_npy(path, shards.shape, dtype)
    group.barrier()  # the files exist, at full size
    for path, (shards, _) in files.items():
        write_blocks(path, shards)
    group.barrier()  # every rank's rows are in
    return segments


def _remap_slots(ids: Any, rows: Any) -> tuple[TableShards, list[int]]:
    """A remap's slots this rank holds as (id, row) blocks, and the row shards' slot bounds.

    Sharded (torch ShardedTensor: the remap of each row shard lives on its rank) or whole.
    """
    if not hasattr(ids, "local_shards"):
        pairs = torch.stack([torch.as_tensor(ids), torch.as_tensor(rows)], dim=1)
        return TableShards.of(pairs), [0, int(pairs.shape[0])]
    blocks = [
        (int(a.metadata.shard_offsets[0]), 0, torch.stack([a.tensor, b.tensor], dim=1))
        for a, b in zip(ids.local_shards(), rows.local_shards(), strict=True)
    ]
    starts = sorted(int(m.shard_offsets[0]) for m in ids.metadata().shards_metadata)
    size = int(ids.metadata().size[0])
    return TableShards((size, 2), blocks), [*starts, size]


def _finish_files(
    plan: _Files,
    schema: Schema,
    head_config: AnyHeadConfig,
    weights: ModelWeights,
    segments: dict[str, list[int]],
) -> dict[str, Any]:
    """Tables encoded as stored, and the dense part; the manifest entries that describe them."""
    tables = {
        t.name: _finish_table(plan, t.name, head_config.first_order, weights.bias_scale)
        for t in schema.tables
    }
    for t in schema.managed_tables:
        tables[t.name]["remap"] = _finish_remap(plan, t, segments[t.name])
    torch.save(weights.dense, plan.root / "dense.pt")
    return {
        "table_dtype": plan.dtype.value,
        "table_bytes": table_bytes(plan.root),
        "tables": tables,
        "dense": _dense_entry(plan.root, head_config),
    }


def _describe(
    schema: Schema, provenance: dict[str, Any] | None, source: SourceFormat | None
) -> dict[str, Any]:
    """The manifest's head: format, hash rule, schema, where the model and its rows came from."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if schema.managed_tables else PLAIN_FORMAT_VERSION,
        "recsys_version": __version__,
        "created_unix": int(time.time()),
        "hashing": HASH_RULE,
        "lookups": lookup_entries(schema),
        "schema": schema.to_dict(),
        "schema_fingerprint": schema.fingerprint(),
        "provenance": provenance or {},
        "source": None if source is None else source_entry(source),
    }


def _dense_entry(root: Path, head_config: AnyHeadConfig) -> dict[str, Any]:
    return {
        "file": "dense.pt",
        "sha256": sha256_file(root / "dense.pt"),
        "architecture": head_config.architecture,
        "head_config": head_config.to_dict(),
    }


def _finish_table(plan: _Files, name: str, first_order: bool, bias_scale: dict[str, float]) -> dict:
    """One table's stored files (encoded from its float32 rows a chunk at a time)."""
    root, dtype, relative = plan.root, plan.dtype, f"tables/{name}.npy"
    params = f"tables/{name}__row_params.npy"
    if dtype is not TableDtype.fp32:
        targets = {root / relative: _NUMPY_DTYPE[dtype]}
        if dtype is TableDtype.int8:
            targets[root / params] = np.float32
        convert_file(plan.rows(name), targets, lambda rows: _encoded(rows, dtype, name))
    _, (num_buckets, dim), _ = npy_layout(root / relative)
    entry = {
        "file": relative,
        "num_buckets": num_buckets,
        "dim": dim,
        "dtype": dtype.value,
        "sha256": sha256_file(root / relative),
        "first_order": None,
    }
    if dtype is TableDtype.int8:
        entry["row_params"] = {
            "file": params,
            "layout": ROW_PARAMS_LAYOUT,
            "sha256": sha256_file(root / params),
        }
    if first_order:
        entry["first_order"] = _finish_bias(plan, name, bias_scale.get(name, 1.0))
    return entry


def _finish_bias(plan: _Files, name: str, scale: float) -> dict:
    """Serving needs only the bias itself: the kernel-alignment columns summed away (times
    `scale`: a bias folded into its row is their mean), stored as `first_order_dtype` (and,
    when that is not float32, kept as float32 for the measure)."""
    relative, bias_dtype = f"tables/{name}{FIRST_ORDER_SUFFIX}.npy", first_order_dtype(plan.dtype)
    targets = {plan.root / relative: _NUMPY_DTYPE[bias_dtype]}
    if bias_dtype is not TableDtype.fp32:
        targets[fp32_bias_sum_path(plan.fp32_dir, name)] = np.float32

    def summed(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        bias = rows.sum(axis=1, keepdims=True, dtype=np.float32) * np.float32(scale)
        stored = encode(bias, bias_dtype, f"{name} (first order)").values
        return (stored, bias)[: len(targets)]

    convert_file(plan.bias_rows(name), targets, summed)
    return {
        "file": relative,
        "dtype": bias_dtype.value,
        "sha256": sha256_file(plan.root / relative),
    }


def _finish_remap(plan: _Files, table: ResolvedTable, segments: list[int]) -> dict[str, Any]:
    """A managed table's remap for serving: (id, row) of every id holding a row, sorted by id,
    and the fallback row of each row shard (its last slot: TorchRec keeps it for misses)."""
    slots = np.load(plan.remap_slots(table.name))
    last = [end - 1 for end in segments[1:]]
    if np.any(slots[last, 0] != REMAP_EMPTY_SLOT):
        raise ValueError(f"{table.name}: a row shard's last slot holds an id, not the fallback")
    pairs = slots[slots[:, 0] != REMAP_EMPTY_SLOT]
    pairs = np.ascontiguousarray(pairs[np.argsort(pairs[:, 0], kind="stable")])
    relative = f"tables/{table.name}{_REMAP}.npy"
    np.save(plan.root / relative, pairs)
    size = table.managed.input_hash_size
    return {
        "file": relative,
        "sha256": sha256_file(plan.root / relative),
        "ids_with_rows": int(len(pairs)),
        "input_hash_size": size,
        "input_block": -(-size // (len(segments) - 1)),  # ids of row shard s: [s, s + 1) * this
        "fallback_rows": [int(slots[i, 1]) for i in last],
    }


def _encoded(rows: np.ndarray, dtype: TableDtype, name: str) -> tuple[np.ndarray, ...]:
    encoded = encode(rows, dtype, name)
    if encoded.row_params is None:
        return (encoded.values,)
    return encoded.values, encoded.row_params


_NUMPY_DTYPE = {TableDtype.fp32: np.float32, TableDtype.fp16: np.float16, TableDtype.int8: np.uint8}


def write_manifest(export_dir: Path, manifest: dict[str, Any]) -> None:
    """manifest.json, replaced atomically (a reader never sees half of it)."""
    path = Path(export_dir) / MANIFEST_FILE
    partial = path.with_name(f"{MANIFEST_FILE}.tmp-{os.getpid()}")
    partial.write_text(json.dumps(manifest, indent=2))
    os.replace(partial, path)


def table_bytes(export_dir: Path) -> int:
    """Bytes on disk of the export's tables (values, int8 row params, biases)."""
    return sum(p.stat().st_size for p in (Path(export_dir) / "tables").glob("*.npy"))


def exported_tables(export_dir: Path) -> dict[str, Rows]:
    """An export's tables as stored, memory-mapped: figures read them a chunk at a time."""
    manifest = Manifest.load(export_dir)
    return {name: load_rows(export_dir, entry) for name, entry in manifest.tables.items()}
