"""The streaming dataset: work units -> checked rows -> shuffle buffer -> featurized `Batch`es.

Each (rank, worker) stream reads a disjoint, round-robin share of the work units (Parquet row
groups, text byte ranges), so within an epoch every row is read exactly once across all
processes. Optionally the unit order is reshuffled every epoch (same seed on every rank, so
the deal stays disjoint), and rows are mixed in a bounded, seeded shuffle buffer. With both
off, rows come in file order: for a click log sorted by time, that is time order.

With `LoaderOptions.holdout` a stream reads one side of `data.holdout` (`recsys.data.holdout`):
the rows held out for validation, or all the others; the deal and the resumable position work
alike on either side.

Bad rows are dropped and counted, or stop the run (`recsys.data.rowcheck`). The position in
the epoch is resumable (`recsys.data.progress`): `set_epoch(epoch, resume=progress)` yields
exactly the rows not yet recorded, on any number of ranks and workers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recsys.config import DataFormat
from recsys.data.batch import Batch
from recsys.data.featurize import RecordOrigin, RowSlicer, featurize
from recsys.data.holdout import HoldoutSplit, plan_holdout
from recsys.data.prefetch import ReadAheadSwitch, ThreadPrefetcher
from recsys.data.progress import BatchPosition, EpochProgress
from recsys.data.reader import ROW_ID_COLUMN, UNIT_COLUMN, RowReader
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat, WorkUnit, assign_units
from recsys.schema import Schema

log = logging.getLogger(__name__)

# Rows decoded and featurized per call. Bigger blocks spread a call's fixed cost over more
# rows, but the first batch waits for a whole block, and every block's raw and featurized
# rows are held at once: at 2^17 rows the first batch came after 135-220 ms, at 2^15 after
# 60-70 ms, for 7% fewer rows/s read alone (726k vs 779k on `make bench`'s 1M rows; 2^13:
# twice the time per row). Reading a block ahead (`make_loader`) hides that while training.
READ_BLOCK_ROWS = 1 << 15


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int
    shuffle_buffer_rows: int = 0  # rows mixed at a time; 0 keeps file order
    shuffle_files: bool = False  # reorder work units every epoch
    seed: int = 0
    num_workers: int = 0
    source: SourceFormat = field(default_factory=SourceFormat)
    holdout: HoldoutSplit | None = None  # data.holdout: read the held-out rows, or the others


@dataclass(frozen=True)
class _Done:
    """A unit none of whose rows is left in the buffer, with its bad and padded row counts."""

    unit: int
    bad_rows: dict[str, int]
    rows_padded: int = 0


class StreamingDataset(IterableDataset):
    """Streams one rank's share of a data set as `Batch`es; call `set_epoch` per epoch."""

    def __init__(
        self, path: str, schema: Schema, options: LoaderOptions, rank: int = 0, world_size: int = 1
    ):
        super().__init__()
        self.path, self.schema, self.options = path, schema, options
        self.rank, self.world_size = rank, world_size
        # The read path stats and the serving scorer share (recsys.data.reader).
        self.reader = RowReader(path, options.source, schema)
        self.fs, self.units = self.reader.fs, self.reader.units
        self.holdout = None
        if options.holdout is not None:  # only units with rows of this side (recsys.data.holdout)
            self.holdout = plan_holdout(self.units, options.holdout, options.source.format)
            self.units = self.holdout.side_units()
        self.epoch = 0
        self.resume: EpochProgress | None = None

    @property
    def num_rows(self) -> int:
        """Rows this stream reads; for text (rows unknown before reading) an estimate."""
        if self.options.source.format is DataFormat.parquet:
            rows = sum(u.num_rows or 0 for u in self.units)
        else:
            rows = _estimate_text_rows(self.fs, self.units)
        return rows if self.holdout is None else self.holdout.side_rows(rows)

    def set_epoch(self, epoch: int, resume: EpochProgress | None = None) -> None:
        """Read epoch `epoch` next; with `resume`, only the rows it has not recorded."""
        if resume is not None and resume.epoch != epoch:
            raise ValueError(f"resume progress is for epoch {resume.epoch}, not epoch {epoch}")
        self.epoch, self.resume = epoch, resume

    def new_progress(self) -> EpochProgress:
        """An empty progress for the current epoch, for the trainer to `record` batches in."""
        return EpochProgress(epoch=self.epoch)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stream = (worker + self._worker_offset(workers)) % workers
        order = list(self.units)
        if self.options.shuffle_files:
            np.random.default_rng([self.options.seed, self.epoch]).shuffle(order)
        mine = assign_units(order, self.rank * workers + stream, self.world_size * workers)
        if self.resume is not None:
            mine = [u for u in mine if u.index not in self.resume.done_units]
        rng = np.random.default_rng([self.options.seed, self.epoch, self.rank, stream])
        bad = BadRowLog(skip=self.options.source.skip_bad_rows)
        template = BatchPosition(self.rank, stream, workers, self.world_size, None, None)
        try:
            yield from self._batches(self._events(mine, bad, rng), template)
        finally:
            # Arrow's allocator keeps freed pages for reuse; what follows a pass (evaluation,
            # checkpoint, export) would otherwise stack its peak on top of them.
            pa.default_memory_pool().release_unused()

    def _worker_offset(self, workers: int) -> int:
        """Resuming on the same layout: worker 0 plays the stream whose batch came next, so
        the DataLoader's round-robin over workers continues where the interrupted one was."""
        if self.resume is None:
            return 0
        next_worker = self.resume.next_worker.get(self.rank)
        if next_worker is None or tuple(next_worker[1:]) != (workers, self.world_size):
            return 0
        return next_worker[0]

    # -- rows: units -> checked blocks -> buffer -> batch-sized tables ----------------------

    def _events(
        self, units: list[WorkUnit], bad: BadRowLog, rng: np.random.Generator
    ) -> Iterator[pa.Table | _Done]:
        size = self.options.batch_size
        mix_rng = rng if self.options.shuffle_buffer_rows else None
        buffer: list[pa.Table] = []
        buffered = 0
        read: list[_Done] = []  # units read to the end whose rows may still be buffered
        for unit in units:
            for block in self._unit_rows(unit, bad):
                buffer.append(block)
                buffered += block.num_rows
                if buffered >= self._buffer_limit():
                    table = _mix(buffer, mix_rng)
                    keep = table.num_rows % size
                    yield table.slice(0, table.num_rows - keep)  # whole batches
                    buffer, buffered = [table.slice(table.num_rows - keep)], keep
                    yield from _left_buffer(read, buffer)
            read.append(_Done(unit.index, bad.take(), bad.take_padded()))
            yield from _left_buffer(read, buffer)
        if buffered:
            yield _mix(buffer, mix_rng)
        yield from read

    @property
    def read_rows(self) -> int:
        """Rows read and featurized at a time (a block), then cut into batches."""
        # Decoding and featurizing cost a fixed overhead per call, so many batches' worth of
        # rows are read (and hashed) at once.
        return max(self.options.batch_size, READ_BLOCK_ROWS)

    @property
    def batches_per_block(self) -> int:
        """Batches cut out of one read block: they come at once, after its featurizing."""
        return -(-self.read_rows // self.options.batch_size)

    def _buffer_limit(self) -> int:
        if not self.options.shuffle_buffer_rows:
            return self.options.batch_size
        return max(self.options.shuffle_buffer_rows, self.options.batch_size)

    def _unit_rows(self, unit: WorkUnit, bad: BadRowLog) -> Iterator[pa.Table]:
        """The unit's checked rows with row and unit ids; rows already trained on (resume)
        left out. A unit that cannot be used at all is skipped or fails (RowReader)."""
        done = self.resume.recorded_ids(unit.index) if self.resume is not None else None
        for checked in self.reader.unit_rows(unit, bad, self.read_rows):
            if self.holdout is not None:
                checked = self.holdout.keep(checked, unit)
            if done is not None and len(done):
                seen = pc.is_in(checked.column(ROW_ID_COLUMN), pa.array(done))
                checked = checked.filter(pc.invert(seen))
            if checked.num_rows:
                yield checked

    # -- batches: featurize, attach the position --------------------------------------------

    def _batches(
        self, events: Iterator[pa.Table | _Done], template: BatchPosition
    ) -> Iterator[Batch]:
        # Each block of rows is featurized once, then cut into batches (see RowSlicer).
        # One batch is held back so the units finished (and rows skipped) by the time the
        # next one is made can be reported with it: a batch carries the units its rows closed.
        size = self.options.batch_size
        pending: tuple[pa.Table, RowSlicer, int] | None = None
        closed: list[_Done] = []  # units finished since the last batch was made
        for event in events:
            if isinstance(event, _Done):
                closed.append(event)
                continue
            first_row = int(event.column(ROW_ID_COLUMN)[0].as_py())
            origin = RecordOrigin(source=self.path, first_row=first_row)
            slicer = featurize(event, self.schema, origin).row_slicer()
            for start in range(0, event.num_rows, size):
                if pending is not None:
                    yield self._batch(pending, template, closed)
                    closed = []
                pending = (event, slicer, start)
        if pending is not None or any(c.bad_rows or c.rows_padded for c in closed):
            yield self._batch(pending, template, closed)

    def _batch(
        self,
        rows: tuple[pa.Table, RowSlicer, int] | None,
        template: BatchPosition,
        closed: list[_Done],
    ) -> Batch:
        size = self.options.batch_size
        if rows is None:  # only skipped rows: report them all the same
            batch = Batch.padding(self.schema, size)
            row_ids = unit_ids = np.zeros(0, np.int64)
        else:
            block, slicer, start = rows
            table = block.slice(start, size)
            row_ids = table.column(ROW_ID_COLUMN).to_numpy()
            unit_ids = table.column(UNIT_COLUMN).to_numpy()
            arrays = slicer.take(start, start + table.num_rows)
            batch = Batch.from_arrays(arrays, self.schema, row_ids, size=size)
        bad: Counter[str] = Counter()
        for unit in closed:
            bad.update(unit.bad_rows)
        batch.bad_rows = dict(bad)
        batch.rows_padded = sum(unit.rows_padded for unit in closed)
        batch.position = replace(
            template,
            row_ids=row_ids,
            unit_ids=unit_ids,
            units_done=tuple(unit.unit for unit in closed),
        )
        return batch


def _left_buffer(read: list[_Done], buffer: list[pa.Table]) -> Iterator[_Done]:
    """Units of `read` with no row left in `buffer` (removed from `read`)."""
    if not read:
        return
    present: set[int] = set()
    for table in buffer:
        if table.num_rows:
            present.update(pc.unique(table.column(UNIT_COLUMN)).to_pylist())
    for item in [r for r in read if r.unit not in present]:
        read.remove(item)
        yield item


def _mix(buffer: list[pa.Table], rng: np.random.Generator | None) -> pa.Table:
    table = pa.concat_tables(_same_types(buffer))
    if rng is None:
        return table
    return table.take(pa.array(rng.permutation(table.num_rows)))


def _same_types(tables: list[pa.Table]) -> list[pa.Table]:
    """`tables` with one type per column: an id column read as a dictionary from one file and
    plain from another (`recsys.data.source` reads near-unique ids plain) is decoded."""
    if all(t.schema == tables[0].schema for t in tables):
        return tables
    mixed = {
        name
        for t in tables
        for name, kind in zip(t.schema.names, t.schema.types, strict=True)
        if kind != tables[0].schema.field(name).type
    }
    return [_decoded(t, mixed) for t in tables]


def _decoded(table: pa.Table, names: set[str]) -> pa.Table:
    for name in names:
        kind = table.schema.field(name).type
        if pa.types.is_dictionary(kind):
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, table.column(name).cast(kind.value_type))
    return table


def _estimate_text_rows(fs, units: list[WorkUnit]) -> int:
    total = sum(u.end - u.start for u in units)
    if not units or not total:
        return 0
    with fs.open_input_file(units[0].path) as f:
        sample = f.read(1 << 16)
    lines = max(sample.count(b"\n"), 1)
    return max(1, round(total * lines / max(len(sample), 1)))


def make_loader(
    dataset: StreamingDataset, switch: ReadAheadSwitch | None = None
) -> Iterable[Batch]:
    """Batches of `dataset`: read by worker processes (num_workers > 0), or in this process
    (num_workers = 0, the default): ahead in a background thread, or by the consumer when
    `switch` is off (see recsys.data.prefetch).

    Each iteration is a generator: closing it (or reading it to the end) stops and joins its
    thread or worker processes there and then.
    """
    workers = dataset.options.num_workers
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(dataset.options.seed),
    )
    if workers:
        return _WorkerBatches(loader)
    # A block's batches come at once after it is featurized: with room for them all, the
    # thread featurizes the next block while training takes this one, instead of the trainer
    # waiting on every block.
    depth = max(4, dataset.batches_per_block + 1)
    return ThreadPrefetcher(loader, depth=depth, switch=switch)


class _WorkerBatches(Iterable[Batch]):
    """A multi-process DataLoader whose iteration, closed early, shuts its workers down."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        iterator = iter(self.loader)
        try:
            yield from iterator
        finally:
            # What the iterator's __del__ would do whenever it is collected: stop the
            # workers and join them (idempotent; already done when the data ran out).
            iterator._shutdown_workers()
