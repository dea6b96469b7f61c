"""Evaluation predictions, each rank's on its own disk file, and a bounded sample of them.

    <predictions>.parts/part-<rank>.parquet   row_id, prob, logit, label, weight: the rows one
                                              rank scored, in row groups sorted by row id
    <predictions>                             row_id, prob of every rank's rows, sorted by
                                              row id: merged from the parts by rank 0, reading
                                              a row group at a time (`merge_parts`)

A rank keeps `SPILL_ROWS` rows in memory before they go to its file, which the metrics read
again (`PredictionSpill.chunks`: AUC's refinement passes); nothing is gathered. The sample that
figures are drawn from (`PredictionSample`) keeps the rows whose row-id hash is smallest: the
same rows whatever the number of ranks, every row of an evaluation smaller than the sample.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys.distributed.gather import all_gather_rows

SPILL_ROWS = 1 << 16  # rows per row group (and held in memory before they are written)
SAMPLE_ROWS = 1 << 17  # rows kept for figures

SPILL_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("prob", pa.float32()),
        ("logit", pa.float32()),
        ("label", pa.float32()),
        ("weight", pa.float32()),
    ]
)
OUTPUT_SCHEMA = pa.schema([("row_id", pa.int64()), ("prob", pa.float32())])


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


class PredictionSpill:
    """One rank's predictions, written to `path` in row groups sorted by row id."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self.path, SPILL_SCHEMA)
        self._pending: list[dict[str, np.ndarray]] = []
        self._rows = 0

    def append(self, columns: dict[str, np.ndarray]) -> None:
        """Rows as arrays named as SPILL_SCHEMA's columns."""
        self._pending.append(columns)
        self._rows += len(columns["row_id"])
        if self._rows >= SPILL_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        columns = {k: np.concatenate([p[k] for p in self._pending]) for k in SPILL_SCHEMA.names}
        order = np.argsort(columns["row_id"], kind="stable")
        self._writer.write_table(
            pa.table({k: v[order] for k, v in columns.items()}, schema=SPILL_SCHEMA)
        )
        self._pending, self._rows = [], 0

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None

    def chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(logit, positive weight, negative weight) as float64, a row group at a time."""
        file = pq.ParquetFile(self.path)
        for i in range(file.num_row_groups):
            table = file.read_row_group(i, columns=["logit", "label", "weight"])
            logit, y, w = (
                torch.from_numpy(table[c].to_numpy().astype(np.float64))
                for c in ("logit", "label", "weight")
            )
            yield logit, w * y, w * (1.0 - y)


def merge_parts(parts: list[Path], output: Path) -> int:
    """Every part's (row_id, prob) into one file sorted by row id; returns its row count.

    Row groups are taken in order of their smallest row id; rows below the next group's
    smallest id are final and go out. Memory: the row groups whose id ranges overlap (one or
    two per rank and loader worker when each reads its share of the files in order).
    """
    groups = sorted(_row_groups(parts))
    held_ids, held_probs = np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows = 0
    with pq.ParquetWriter(output, OUTPUT_SCHEMA) as writer:
        for smallest, path, index in groups:
            ready = held_ids < smallest
            rows += _write_sorted(writer, held_ids[ready], held_probs[ready])
            table = pq.ParquetFile(path).read_row_group(index, columns=["row_id", "prob"])
            held_ids = np.concatenate([held_ids[~ready], table["row_id"].to_numpy()])
            held_probs = np.concatenate([held_probs[~ready], table["prob"].to_numpy()])
        rows += _write_sorted(writer, held_ids, held_probs)
    return rows


def _row_groups(parts: list[Path]) -> Iterator[tuple[int, str, int]]:
    for path in parts:
        meta = pq.ParquetFile(path).metadata
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(0).statistics
            yield int(stats.min), str(path), i


def _write_sorted(writer: pq.ParquetWriter, ids: np.ndarray, probs: np.ndarray) -> int:
    if len(ids) == 0:
        return 0
    order = np.argsort(ids, kind="stable")
    writer.write_table(pa.table({"row_id": ids[order], "prob": probs[order]}, OUTPUT_SCHEMA))
    return len(ids)


def publish(output: Path, world_size: int) -> None:
    """Rank 0, once every rank's part is closed: the merged file in place of the parts."""
    folder = parts_dir(output)
    parts = [folder / part_name(rank) for rank in range(world_size)]
    partial = output.with_name(output.name + ".tmp")
    merge_parts(parts, partial)
    partial.replace(output)
    shutil.rmtree(folder, ignore_errors=True)


def part_name(rank: int) -> str:
    return f"part-{rank:05d}.parquet"


# ------------------------------------------------------------------------------ sample


class PredictionSample:
    """At most `size` rows (row id, prob, label): those whose row-id hash is smallest."""

    def __init__(self, size: int = SAMPLE_ROWS):
        self.size = size
        self._rows = torch.zeros(4, 0, dtype=torch.float64)  # hash key, row id, prob, label
        self._held = 0

    def add(self, row_ids: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> None:
        keys = torch.from_numpy(row_hash(row_ids.numpy()))
        batch = torch.stack([keys, row_ids.double(), probs.double(), labels.double()])
        self._rows = torch.cat([self._rows, batch], dim=1)
        if self._rows.shape[1] > 2 * self.size:  # trimmed now and then: amortised O(1) a row
            self._rows = _smallest(self._rows, self.size)

    def gather(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sample over every rank (a collective), sorted by row id: ids, probs, labels."""
        rows = _smallest(all_gather_rows(_smallest(self._rows, self.size)), self.size)
        rows = rows[:, torch.argsort(rows[1], stable=True)]
        ids = rows[1].numpy().astype(np.int64)
        return ids, rows[2].numpy().astype(np.float32), rows[3].numpy().astype(np.float32)


def _smallest(rows: torch.Tensor, size: int) -> torch.Tensor:
    if rows.shape[1] <= size:
        return rows
    keep = torch.topk(rows[0], size, largest=False).indices
    return rows[:, keep]


def row_hash(row_ids: np.ndarray) -> np.ndarray:
    """A fixed hash of row ids (splitmix64's finaliser) as float64 in [0, 1)."""
    x = row_ids.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
