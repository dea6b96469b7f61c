"""What train-days measures about each day: new ids, last sightings, drift and row norms.

New ids are counted exactly, by raw id (the text of each value, per sparse feature): one
Python set per feature of every id seen so far, so memory grows with the distinct ids (about
60-100 bytes each: fine to tens of millions). A HyperLogLog (`recsys.data.hll`) would bound
it, but tells only how many distinct ids there are, not which are new: the new count would be
the difference of two estimates (union minus history), whose error (~0.8% of the history at
p=14) swamps a small new share.

Drift and norms compare the exports of consecutive days (float32 rows, decoded from fp16 /
int8): a row counts as touched when any of its values changed, which under the fused sparse
optimizers (row-wise: only rows read in a step move) are the rows the day's ids read, plus
rows a managed table reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.featurize import featurize
from recsys.data.reader import RowReader
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat
from recsys.export.manifest import Manifest
from recsys.export.quantize import load_rows
from recsys.schema import Schema

NORM_PERCENTILES = (50, 90, 99)
_BATCH_ROWS = 65536


@dataclass
class DayIds:
    """One day's ids: distinct raw ids and their occurrences per sparse feature, and the hashed
    (pre-remap) ids of every managed table."""

    distinct: dict[str, set[str]] = field(default_factory=dict)
    occurrences: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per block: ids
    managed: dict[str, set[int]] = field(default_factory=dict)


def read_day_ids(path: str, fmt: SourceFormat, schema: Schema) -> DayIds:
    """One pass over a day's rows, read as training reads them."""
    day = DayIds(
        {f.name: set() for f in schema.sparse_features},
        {f.name: [] for f in schema.sparse_features},
        {t.name: set() for t in schema.managed_tables},
    )
    reader = RowReader(path, fmt, schema)
    for block in reader.rows(BadRowLog(skip=fmt.skip_bad_rows), _BATCH_ROWS):
        for feature in schema.sparse_features:
            values = _id_text(block.column(feature.column), feature.delimiter)
            day.distinct[feature.name].update(values)
            day.occurrences[feature.name].append(np.asarray(values, dtype=object))
        if day.managed:
            arrays = featurize(block, schema)
            for lookup in schema.lookups:
                if lookup.table in day.managed:
                    day.managed[lookup.table].update(arrays.ids[lookup.key].tolist())
    return day


def _id_text(column: pa.ChunkedArray, delimiter: str | None) -> list[str]:
    """Every id of a column as text (lists flattened, delimited strings split), nulls and
    empty strings dropped, as the featurizer drops them."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pc.list_flatten(column)
    elif delimiter is not None:
        column = pc.list_flatten(pc.split_pattern(pc.cast(column, pa.string()), delimiter))
    text = pc.cast(column, pa.string()).to_pylist()
    return [t for t in text if t]


class IdHistory:
    """Distinct raw ids seen so far per sparse feature (exact), and the last day each managed
    table's hashed id was seen."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self.last_seen: dict[str, dict[int, int]] = {}

    def new_ids(self, day: DayIds) -> dict[str, float]:
        """Share of today's distinct ids never seen before, and of today's id occurrences
        (rows, list entries) that read such an id, per feature. Does not record the day."""
        metrics = {}
        for name, today in day.distinct.items():
            seen = self.seen.get(name, set())
            new = today - seen
            metrics[f"new_ids/{name}"] = len(new) / max(len(today), 1)
            occurrences = np.concatenate(day.occurrences[name] or [np.zeros(0, object)])
            hits = sum(1 for v in occurrences if v in new)
            metrics[f"new_id_rows/{name}"] = hits / max(len(occurrences), 1)
        return metrics

    def record(self, day: DayIds, index: int) -> None:
        for name, today in day.distinct.items():
            self.seen.setdefault(name, set()).update(today)
        for table, ids in day.managed.items():
            last = self.last_seen.setdefault(table, {})
            last.update(dict.fromkeys(ids, index))

    def expired(self, table: str, day_index: int, after_days: int) -> np.ndarray:
        """Hashed ids of `table` not seen in the `after_days` days before day `day_index`."""
        last = self.last_seen.get(table, {})
        cutoff = day_index - after_days  # seen on day cutoff or later: kept
        return np.array(sorted(i for i, d in last.items() if d < cutoff), dtype=np.int64)


# ----------------------------------------------------------------------- drift and norms


def table_stats(previous: Path | None, export: Path) -> dict[str, float]:
    """Per table: rows touched since the previous export (count, share), their mean L2 change
    (drift), and percentiles of all rows' L2 norms. Without a previous export: norms only."""
    metrics: dict[str, float] = {}
    now = Manifest.load(export)
    before = Manifest.load(previous) if previous is not None else None
    for name, entry in now.tables.items():
        rows = load_rows(export, entry, mmap=True)
        norms = np.concatenate([np.linalg.norm(block, axis=1) for _, block in _blocks(rows)])
        for q, value in zip(NORM_PERCENTILES, np.percentile(norms, NORM_PERCENTILES), strict=True):
            metrics[f"norm_p{q}/{name}"] = float(value)
        if before is None or name not in before.tables:
            continue
        old = load_rows(previous, before.tables[name], mmap=True)
        moved = [np.linalg.norm(block - old[ids], axis=1) for ids, block in _blocks(rows)]
        change = np.concatenate(moved)
        touched = change[change > 0]
        metrics[f"rows_touched/{name}"] = float(len(touched))
        metrics[f"rows_touched_share/{name}"] = len(touched) / max(len(change), 1)
        metrics[f"drift/{name}"] = float(touched.mean()) if len(touched) else 0.0
    return metrics


def _blocks(rows, size: int = 1 << 16) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row ids, float32 rows) of a stored table, a block at a time."""
    for start in range(0, rows.shape[0], size):
        ids = np.arange(start, min(start + size, rows.shape[0]))
        yield ids, rows[ids]
