"""Validation rows held out of the training stream (`data.holdout`, when data.valid_path is unset).

Two rules pick the held-out rows of `data.train_path`:

    tail   the last `fraction` of the rows in file order: for a log sorted by time, the most
           recent ones, so validation is "the future" as eval is. Parquet: by row id (row ids
           are global positions); text: by bytes (the work unit holding the cut is split in
           two there; both halves snap to line starts as every unit does).
    hash   each row with probability `fraction`, by mmh3 of its row id: for data in no
           useful order. Also what tail falls back to, with a warning, for a single
           compressed text file (read whole: it cannot be cut by bytes).

`plan_holdout` turns the plan of work units into a `Holdout`, identically on every rank and
worker. The train stream and the validation stream each take only the units holding rows of
their side (then deal those out to ranks x workers as always) and keep only their side's rows,
so every row is trained or validated, exactly once, on any number of processes; a resumed
train stream skips its recorded rows as before. Rows are assigned before any shuffle buffer,
and row ids do not depend on the shuffle: the split is the same every epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from recsys.config import DataFormat, HoldoutBy, HoldoutConfig
from recsys.data.featurize import DataError
from recsys.data.reader import ROW_ID_COLUMN
from recsys.data.source import WorkUnit
from recsys.data.text import is_compressed
from recsys.hashing import hash32_array

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HoldoutSplit:
    """Which side of `data.holdout` a stream reads: the held-out rows, or all the others."""

    fraction: float
    by: HoldoutBy = HoldoutBy.tail
    seed: int = 0
    held_out: bool = False  # True: the validation side

    @staticmethod
    def from_config(config: HoldoutConfig, held_out: bool) -> HoldoutSplit:
        return HoldoutSplit(float(config.fraction), HoldoutBy(config.by), config.seed, held_out)

    def describe(self) -> str:
        if self.by is HoldoutBy.tail:
            return f"the last {self.fraction:g} of data.train_path's rows in file order"
        return f"{self.fraction:g} of data.train_path's rows by row-id hash (seed {self.seed})"


@dataclass(frozen=True)
class Holdout:
    """The units of a path after the cut, and which of their rows are held out.

    Attributes:
        units: the plan (a text unit holding the cut is split; its second half gets a new
            index, past every other, so no other row changes id).
        held: units whose rows are all held out.
        mixed: units with rows on both sides: `held_mask` decides row by row.
        first_held_row: Parquet tail: the row id from which rows are held out.
    """

    split: HoldoutSplit
    units: tuple[WorkUnit, ...]
    held: frozenset[int]
    mixed: frozenset[int]
    first_held_row: int | None = None

    def side_units(self) -> list[WorkUnit]:
        """The units holding rows of this stream's side, in plan (file) order."""
        if self.split.held_out:
            return [u for u in self.units if u.index in self.held or u.index in self.mixed]
        return [u for u in self.units if u.index not in self.held]

    def keep(self, rows: pa.Table, unit: WorkUnit) -> pa.Table:
        """The rows of `rows` (read from `unit`) on this stream's side."""
        if unit.index not in self.mixed:
            return rows  # the unit is on one side: side_units() already chose
        held = self.held_mask(rows.column(ROW_ID_COLUMN).to_numpy())
        return rows.filter(pa.array(held if self.split.held_out else ~held))

    def held_mask(self, row_ids: np.ndarray) -> np.ndarray:
        """Which of the rows of a mixed unit are held out."""
        if self.first_held_row is not None:
            return row_ids >= self.first_held_row
        hashes, _ = hash32_array(pa.array(row_ids, pa.int64()), self.split.seed)
        return hashes < np.uint64(round(self.split.fraction * 2**32))

    def side_rows(self, rows_in_side_units: int) -> int:
        """Rows of this side, from the rows of its units (exact for Parquet tail)."""
        if self.first_held_row is not None:
            total = sum(u.num_rows or 0 for u in self.units if u.error is None)
            cut = self.first_held_row
            return total - cut if self.split.held_out else cut
        if self.split.by is HoldoutBy.hash:
            share = self.split.fraction if self.split.held_out else 1.0 - self.split.fraction
            return round(rows_in_side_units * share)
        return rows_in_side_units


def plan_holdout(units: list[WorkUnit], split: HoldoutSplit, fmt: DataFormat) -> Holdout:
    """Where the held-out rows are; the same on every rank and worker (no file is read)."""
    if split.by is HoldoutBy.hash:
        return Holdout(split, tuple(units), frozenset(), frozenset(u.index for u in units))
    if fmt is DataFormat.parquet:
        return _parquet_tail(units, split)
    return _text_tail(units, split)


def _parquet_tail(units: list[WorkUnit], split: HoldoutSplit) -> Holdout:
    readable = [u for u in units if u.error is None]  # unreadable ones: the train side reports
    total = sum(u.num_rows or 0 for u in readable)
    cut = total - _held_count(total, split.fraction, "rows")
    held = {u.index for u in readable if u.first_row_id >= cut}
    mixed = {u.index for u in readable if u.first_row_id < cut < u.first_row_id + u.num_rows}
    return Holdout(split, tuple(units), frozenset(held), frozenset(mixed), first_held_row=cut)


def _text_tail(units: list[WorkUnit], split: HoldoutSplit) -> Holdout:
    """Cut the byte ranges at the last `fraction` of all bytes."""
    sizes = [u.end - u.start for u in units]
    total = sum(sizes)
    cut = total - _held_count(total, split.fraction, "bytes")
    before = 0
    i = 0
    while before + sizes[i] <= cut:  # cut < total: some unit holds it
        before += sizes[i]
        i += 1
    offset = cut - before  # bytes of unit i before the cut
    plan, unit = list(units), units[i]
    if offset > 0:
        if is_compressed(unit.path):  # read whole: cut at its nearer end instead
            i += int(offset * 2 >= sizes[i])
        else:  # the second half gets a new index: no other row changes its id
            second = replace(unit, index=max(u.index for u in units) + 1)
            plan[i : i + 1] = [
                replace(unit, end=unit.start + offset),
                replace(second, start=unit.start + offset),
            ]
            i += 1
    held = frozenset(u.index for u in plan[i:])
    if not held or len(held) == len(plan):
        log.warning(
            "data.holdout.by=tail cannot cut %s: it is compressed and read whole. Holding out "
            "rows by row-id hash instead (data.holdout.by=hash); to validate on later rows, "
            "split the log into several files or set data.valid_path.",
            unit.path,
        )
        return plan_holdout(units, replace(split, by=HoldoutBy.hash), DataFormat.csv)
    return Holdout(split, tuple(plan), held, frozenset())


def _held_count(total: int, fraction: float, what: str) -> int:
    """How many rows (or bytes) the tail holds out: at least one, never all."""
    held = max(1, round(total * fraction))
    if held >= total:
        raise DataError(
            f"data.holdout.fraction={fraction} holds out all {total} {what} of data.train_path: "
            f"lower it, set data.valid_path, or data.holdout.fraction=0 for no holdout."
        )
    return held


__all__ = ["Holdout", "HoldoutSplit", "plan_holdout"]
