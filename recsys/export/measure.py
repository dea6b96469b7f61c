"""What storing an export's tables in fp16 or int8 changed: scores and AUC on labelled rows,
against the float32 tables it was made from; and what a tracker records of an export."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.config import OnBadRow
from recsys.data.featurize import featurize
from recsys.data.reader import RowReader
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat
from recsys.export.manifest import MANIFEST_FILE, load_array
from recsys.export.scorer import Scorer
from recsys.model.layout import FIRST_ORDER_SUFFIX

log = logging.getLogger(__name__)

DEFAULT_MEASURE_ROWS = 50_000


def fp32_bias_sum_path(fp32_dir: Path, table: str) -> Path:
    """Where the writer leaves a table's float32 first-order sums for the measurement."""
    return Path(fp32_dir) / f"{table}{FIRST_ORDER_SUFFIX}_sum.npy"


def measure_quantization(
    export_dir: Path,
    fp32_dir: Path,
    records_path: str,
    source: SourceFormat | None = None,
    max_rows: int = DEFAULT_MEASURE_ROWS,
) -> dict[str, Any]:
    """What storing the tables as the export does changed, on labelled records.

    Scores the first `max_rows` usable rows of `records_path` (read as `source`: bad rows are
    skipped, they matter to no comparison) twice: with the export as stored, and with the same
    export over the float32 tables it was made from (`fp32_dir/<table>.npy`, first-order sums
    `<table>__first_order_sum.npy`, memory-mapped: only the rows the records hash to are read).

    Returns:
        max_abs_score_error (click probability), eval_auc_fp32, eval_auc, auc_change
        (eval_auc - eval_auc_fp32), rows_measured, records (the path).
    """
    stored = Scorer(export_dir, verify=False)
    reference = stored.with_tables(
        {n: load_array(Path(fp32_dir) / f"{n}.npy", mmap=True) for n in stored.tables},
        {n: load_array(fp32_bias_sum_path(fp32_dir, n), mmap=True) for n in stored.biases},
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
