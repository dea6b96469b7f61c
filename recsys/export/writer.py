"""Writing the serving export from a trained model's full (unsharded) state."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recsys import __version__
from recsys.config import OnBadRow, TableDtype
from recsys.data.featurize import featurize
from recsys.data.reader import RowReader
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat
from recsys.export.manifest import (
    FORMAT,
    FORMAT_VERSION,
    HASH_RULE,
    MANIFEST_FILE,
    lookup_entries,
    sha256_file,
    source_entry,
)
from recsys.export.quantize import ROW_PARAMS_LAYOUT, encode, first_order_dtype
from recsys.export.scorer import Scorer
from recsys.model.layout import ModelWeights
from recsys.model.registry import AnyHeadConfig
from recsys.schema import Schema

log = logging.getLogger(__name__)

DEFAULT_MEASURE_ROWS = 50_000


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
) -> Path:
    """Write tables, dense part and manifest; the folder appears whole or not at all.

    Args:
        export_dir: destination; replaced if it exists.
        schema: the feature schema the model was trained with.
        head_config: the head (dense part): its architecture and shapes.
        weights: the model's full (unsharded) weights by role (`WeightLayout.split`).
        provenance: where the model came from (MLflow run id, eval metrics), kept as is.
        source: how the training records were laid out (data.format, header, columns); the
            scorer reads raw records the same way. None: not recorded (the scorer then falls
            back to its rule for old exports).
        table_dtype: how tables are stored (fp32, fp16, row-wise int8; recsys.export.quantize).
        measure_on: labelled records (data.eval_path, read as `source`) on which a fp16 / int8
            export measures what storing it so changed: scores of up to `measure_rows` of them
            with these tables vs the float32 weights, recorded under the manifest's
            `quantization` key. None: not measured.
    """
    export_dir = Path(export_dir)
    staging = export_dir.with_name(export_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "tables").mkdir(parents=True)
    table_dtype = TableDtype(table_dtype)
    try:
        files = _write_files(staging, schema, head_config, weights, table_dtype)
        manifest = _describe(schema, provenance, source) | files
        if table_dtype is not TableDtype.fp32 and measure_on is not None and measure_rows > 0:
            write_manifest(staging, manifest)  # the scorer that measures reads it
            manifest["quantization"] = measure_quantization(
                staging, weights, measure_on, source, measure_rows
            )
        write_manifest(staging, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the folder appears whole or not at all
        raise
    shutil.rmtree(export_dir, ignore_errors=True)
    staging.rename(export_dir)
    log.info(
        "export written to %s (%d tables, %s, %.1f MB of tables)",
        export_dir,
        len(manifest["tables"]),
        table_dtype.value,
        manifest["table_bytes"] / 1e6,
    )
    return export_dir


def _write_files(
    root: Path,
    schema: Schema,
    head_config: AnyHeadConfig,
    weights: ModelWeights,
    table_dtype: TableDtype,
) -> dict[str, Any]:
    """Tables and dense part under `root`; the manifest entries that describe them."""
    tables = {
        t.name: _write_table(root, t.name, weights, head_config.first_order, table_dtype)
        for t in schema.tables
    }
    torch.save(weights.dense, root / "dense.pt")
    return {
        "table_dtype": table_dtype.value,
        "table_bytes": table_bytes(root),
        "tables": tables,
        "dense": _dense_entry(root, head_config),
    }


def _describe(
    schema: Schema, provenance: dict[str, Any] | None, source: SourceFormat | None
) -> dict[str, Any]:
    """The manifest's head: format, hash rule, schema, where the model and its rows came from."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
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


def _write_table(
    root: Path, name: str, weights: ModelWeights, first_order: bool, dtype: TableDtype
) -> dict:
    weight = weights.tables[name].float().numpy()
    encoded = encode(weight, dtype, name)
    entry = {
        "file": f"tables/{name}.npy",
        "num_buckets": int(weight.shape[0]),
        "dim": int(weight.shape[1]),
        "dtype": dtype.value,
        **_save(root, f"tables/{name}.npy", encoded.values),
        "first_order": None,
    }
    if encoded.row_params is not None:
        entry["row_params"] = {
            "file": f"tables/{name}__row_params.npy",
            "layout": ROW_PARAMS_LAYOUT,
            **_save(root, f"tables/{name}__row_params.npy", encoded.row_params),
        }
    if first_order:
        # Serving needs only the bias itself: sum the kernel-alignment columns away.
        bias = weights.first_order[name].float().sum(dim=1, keepdim=True).numpy()
        bias_dtype = first_order_dtype(dtype)
        stored = encode(bias, bias_dtype, f"{name} (first order)")
        entry["first_order"] = {
            "file": f"tables/{name}__first_order.npy",
            "dtype": bias_dtype.value,
            **_save(root, f"tables/{name}__first_order.npy", stored.values),
        }
    return entry


def _save(root: Path, relative: str, array: np.ndarray) -> dict:
    np.save(root / relative, np.ascontiguousarray(array), allow_pickle=False)
    return {"sha256": sha256_file(root / relative)}


def write_manifest(export_dir: Path, manifest: dict[str, Any]) -> None:
    """manifest.json, replaced atomically (a reader never sees half of it)."""
    path = Path(export_dir) / MANIFEST_FILE
    partial = path.with_name(f"{MANIFEST_FILE}.tmp-{os.getpid()}")
    partial.write_text(json.dumps(manifest, indent=2))
    os.replace(partial, path)


def table_bytes(export_dir: Path) -> int:
    """Bytes on disk of the export's tables (values, int8 row params, biases)."""
    return sum(p.stat().st_size for p in (Path(export_dir) / "tables").glob("*.npy"))


# ----------------------------------------------------------------- measuring quantization


def measure_quantization(
    export_dir: Path,
    weights: ModelWeights,
    records_path: str,
    source: SourceFormat | None = None,
    max_rows: int = DEFAULT_MEASURE_ROWS,
) -> dict[str, Any]:
    """What storing the tables as the export does changed, on labelled records.

    Scores the first `max_rows` usable rows of `records_path` (read as `source`: bad rows are
    skipped, they matter to no comparison) twice: with the export as stored, and with the same
    export over the float32 `weights` it was made from.

    Returns:
        max_abs_score_error (click probability), eval_auc_fp32, eval_auc, auc_change
        (eval_auc - eval_auc_fp32), rows_measured, records (the path).
    """
    stored = Scorer(export_dir, verify=False)
    reference = stored.with_tables(
        {n: weights.tables[n].float().numpy() for n in stored.tables},
        {n: weights.first_order[n].float().sum(dim=1, keepdim=True).numpy() for n in stored.biases},
    )
    fmt = replace(source or SourceFormat(), on_bad_row=OnBadRow.skip)
    labels, got, want = [], [], []
    for block in _first_rows(RowReader(records_path, fmt, stored.schema), max_rows):
        labels.append(featurize(block, stored.schema).labels)
        got.append(stored.score(block))
        want.append(reference.score(block))
    if not labels:
        raise ValueError(
            f"{records_path}: no usable rows to measure the {stored.manifest.raw['table_dtype']} "
            f"export on; check data.eval_path, or set export.quantization_eval_rows=0 to skip."
        )
    y, got_all, want_all = np.concatenate(labels), np.concatenate(got), np.concatenate(want)
    auc_fp32, auc = binary_auc(y, want_all), binary_auc(y, got_all)
    error = float(np.abs(got_all - want_all).max())
    log.info(
        "%s tables measured on %d rows of %s: max score error %.3g, eval AUC %.6f -> %.6f",
        stored.manifest.raw["table_dtype"], len(y), records_path, error, auc_fp32, auc,
    )  # fmt: skip
    return {
        "max_abs_score_error": error,
        # None, not NaN (which is not JSON), when the rows hold one class only.
        "eval_auc_fp32": _finite_or_none(auc_fp32),
        "eval_auc": _finite_or_none(auc),
        "auc_change": _finite_or_none(auc - auc_fp32),
        "rows_measured": int(len(y)),
        "records": str(records_path),
    }


def export_metrics(export_dir: Path) -> dict[str, float]:
    """What a tracker records of a written export: `export/table_bytes`, and for fp16 / int8
    tables the measured `export/max_score_error` and `export/auc_change` (with the AUCs)."""
    raw = json.loads((Path(export_dir) / MANIFEST_FILE).read_text())
    measured = raw.get("quantization") or {}
    metrics = {
        "export/table_bytes": raw.get("table_bytes"),
        "export/max_score_error": measured.get("max_abs_score_error"),
        "export/auc_change": measured.get("auc_change"),
        "export/eval_auc": measured.get("eval_auc"),
        "export/eval_auc_fp32": measured.get("eval_auc_fp32"),
    }
    return {k: float(v) for k, v in metrics.items() if v is not None}


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _first_rows(reader: RowReader, max_rows: int) -> Iterator[pa.Table]:
    left = max_rows
    for block in reader.rows(BadRowLog(skip=True), min(max_rows, 1 << 16)):
        if block.num_rows == 0:
            continue
        yield block.slice(0, left)
        left -= min(left, block.num_rows)
        if left == 0:
            return


def binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with tied scores counted 1/2 (midranks); NaN with one class only.

    Plain numpy: recsys.metrics gathers across ranks, which serving code must not import.
    """
    labels = np.asarray(labels) > 0.5
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _midranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _midranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks
