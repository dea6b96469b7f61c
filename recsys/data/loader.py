"""The streaming dataset: row groups -> shuffle buffer -> featurized `Batch`es.

Each (rank, worker) pair reads a disjoint, round-robin share of the row groups, so within an
epoch every row is read exactly once across all processes. Optionally the row-group order is
reshuffled every epoch (same seed on every rank, so the deal stays disjoint), and rows are
mixed in a bounded, seeded shuffle buffer. With both off, rows come in file order: for a click
log sorted by time, that is time order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recsys.config import Schema
from recsys.data.batch import Batch
from recsys.data.featurize import RecordOrigin, featurize
from recsys.data.source import Shard, assign_shards, plan_shards, read_shard

ROW_ID_COLUMN = "__row_id"


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int
    shuffle_buffer_rows: int = 0  # rows mixed at a time; 0 keeps file order
    shuffle_files: bool = False  # reorder row groups every epoch
    seed: int = 0
    num_workers: int = 0


class StreamingDataset(IterableDataset):
    """Streams one rank's share of a Parquet dataset as `Batch`es; call `set_epoch` per epoch."""

    def __init__(
        self, path: str, schema: Schema, options: LoaderOptions, rank: int = 0, world_size: int = 1
    ):
        super().__init__()
        self.path, self.schema, self.options = path, schema, options
        self.rank, self.world_size = rank, world_size
        self.fs, self.shards = plan_shards(path)
        self.epoch = 0

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[Shard]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        order = list(self.shards)
        if self.options.shuffle_files:
            np.random.default_rng([self.options.seed, self.epoch]).shuffle(order)
        return assign_shards(order, self.rank * workers + worker, self.world_size * workers)

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.options.seed, self.epoch, self.rank, _worker_id()])
        buffer: list[pa.Table] = []
        buffered = 0
        for shard in self._my_shards():
            next_row_id = shard.first_row_id
            for block in read_shard(self.fs, shard, self.schema.columns, self.options.batch_size):
                buffer.append(_with_row_ids(block, next_row_id))
                next_row_id += block.num_rows
                buffered += block.num_rows
                if buffered >= self._buffer_limit():
                    table = _mix(buffer, rng if self.options.shuffle_buffer_rows else None)
                    keep = table.num_rows % self.options.batch_size
                    yield from self._batches(table.slice(0, table.num_rows - keep))
                    buffer, buffered = [table.slice(table.num_rows - keep)], keep
        if buffered:
            yield from self._batches(
                _mix(buffer, rng if self.options.shuffle_buffer_rows else None)
            )

    def _buffer_limit(self) -> int:
        if not self.options.shuffle_buffer_rows:
            return self.options.batch_size
        return max(self.options.shuffle_buffer_rows, self.options.batch_size)

    def _batches(self, table: pa.Table) -> Iterator[Batch]:
        for start in range(0, table.num_rows, self.options.batch_size):
            part = table.slice(start, self.options.batch_size)
            row_ids = part.column(ROW_ID_COLUMN).to_numpy()
            origin = RecordOrigin(source=self.path, first_row=int(row_ids[0]))
            arrays = featurize(part, self.schema, origin)
            yield Batch.from_arrays(arrays, self.schema, row_ids, size=self.options.batch_size)


def _worker_id() -> int:
    info = get_worker_info()
    return info.id if info else 0


def _with_row_ids(block: pa.RecordBatch, first_row_id: int) -> pa.Table:
    ids = pa.array(np.arange(first_row_id, first_row_id + block.num_rows, dtype=np.int64))
    return pa.Table.from_batches([block]).append_column(ROW_ID_COLUMN, ids)


def _mix(buffer: list[pa.Table], rng: np.random.Generator | None) -> pa.Table:
    table = pa.concat_tables(buffer)
    if rng is None:
        return table
    return table.take(pa.array(rng.permutation(table.num_rows)))


def make_loader(dataset: StreamingDataset) -> DataLoader:
    """Worker processes featurize (hash) in parallel with training; 0 workers reads in-process."""
    workers = dataset.options.num_workers
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(dataset.options.seed),
    )
