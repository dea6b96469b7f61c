"""Where an epoch stands: what has been trained on, so a resumed run reads only the rest.

Each batch carries a `BatchPosition`: its rows' ids and work units, and the units it finished
(all their rows have left the shuffle buffer, in this batch or before). `EpochProgress` keeps
the finished units and, for units still open, the ids of the rows already recorded: at most a
shuffle buffer plus a unit's rows per stream. Units are indices into the plan of the files,
which is the same for any number of ranks and workers, so a checkpoint taken on 2 ranks can
resume on 3. Bad-row counts of a unit are reported with the batch that finishes it, so a
resumed epoch that re-reads an open unit counts its bad rows exactly once.

The trainer calls `record(batch)` once per batch trained, `merge` combines the ranks'
progress, `state_dict` / `from_state_dict` go through checkpoints, and
`StreamingDataset.set_epoch(epoch, resume=progress)` yields exactly the unrecorded rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class BatchPosition:
    """Which stream made a batch and what it covers (numpy, so recording never syncs a device).

    Attributes:
        rank, worker: the stream (rank and DataLoader worker) that made the batch.
        num_workers, world_size: the layout it was made under.
        row_ids: int64 ids of the batch's real rows.
        unit_ids: the work unit of each of those rows.
        units_done: units none of whose rows will come in a later batch of this stream.
    """

    rank: int
    worker: int
    num_workers: int
    world_size: int
    row_ids: np.ndarray
    unit_ids: np.ndarray
    units_done: tuple[int, ...] = ()


class Recordable(Protocol):
    """What recording needs of a batch (a `recsys.data.batch.Batch` is one)."""

    bad_rows: dict[str, int]
    rows_padded: int
    position: BatchPosition | None


@dataclass
class EpochProgress:
    """The batches of one epoch recorded so far (see the module docstring)."""

    epoch: int = 0
    rows: int = 0  # real rows recorded
    bad_rows: dict[str, int] = field(default_factory=dict)  # rows skipped, by reason
    rows_padded: int = 0  # rows read with missing trailing fields added (not skipped)
    done_units: set[int] = field(default_factory=set)
    partial: dict[int, list[np.ndarray]] = field(default_factory=dict)  # open unit -> row ids
    # rank -> (worker whose batch comes next, num_workers, world_size): lets a resumed
    # DataLoader continue its round-robin over workers where the interrupted one stopped.
    next_worker: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def record(self, batch: Recordable) -> None:
        """Count one trained batch; padding batches (no position) change nothing."""
        for reason, count in batch.bad_rows.items():
            self.bad_rows[reason] = self.bad_rows.get(reason, 0) + count
        self.rows_padded += batch.rows_padded
        position = batch.position
        if position is None:
            return
        self.rows += len(position.row_ids)
        if len(position.row_ids):
            for unit in np.unique(position.unit_ids).tolist():
                if unit not in self.done_units:
                    ids = position.row_ids[position.unit_ids == unit]
                    self.partial.setdefault(unit, []).append(ids)
        for unit in position.units_done:
            self.done_units.add(unit)
            self.partial.pop(unit, None)
        self.next_worker[position.rank] = (
            (position.worker + 1) % position.num_workers,
            position.num_workers,
            position.world_size,
        )

    def recorded_ids(self, unit: int) -> np.ndarray:
        """Row ids of an open unit recorded so far (sorted)."""
        parts = self.partial.get(unit)
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    @staticmethod
    def merge(parts: list[EpochProgress]) -> EpochProgress:
        """One progress from the ranks' (each rank records only the batches it trained)."""
        if not parts:
            raise ValueError("EpochProgress.merge needs at least one part")
        epochs = {p.epoch for p in parts}
        if len(epochs) != 1:
            raise ValueError(f"cannot merge the progress of different epochs {sorted(epochs)}")
        merged = EpochProgress(epoch=parts[0].epoch)
        bad: Counter[str] = Counter()
        for p in parts:
            merged.rows += p.rows
            merged.rows_padded += p.rows_padded
            bad.update(p.bad_rows)
            merged.done_units |= p.done_units
            merged.next_worker.update(p.next_worker)
            for unit, ids in p.partial.items():
                merged.partial.setdefault(unit, []).extend(ids)
        for unit in merged.done_units:
            merged.partial.pop(unit, None)
        merged.bad_rows = dict(bad)
        return merged

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values, and int64 tensors for the open units' row ids: what
        `torch.load(weights_only=True)` reads back without allow-listing any type."""
        return {
            "epoch": int(self.epoch),
            "rows": int(self.rows),
            "bad_rows": {str(k): int(v) for k, v in self.bad_rows.items()},
            "rows_padded": int(self.rows_padded),
            "done_units": sorted(int(u) for u in self.done_units),
            "partial": {
                int(unit): torch.from_numpy(self.recorded_ids(unit).astype(np.int64))
                for unit in sorted(self.partial)
            },
            "next_worker": {int(r): [int(x) for x in v] for r, v in self.next_worker.items()},
        }

    @staticmethod
    def from_state_dict(d: dict[str, Any]) -> EpochProgress:
        """Back from `state_dict()`; row ids may be tensors, arrays or lists."""
        return EpochProgress(
            epoch=int(d["epoch"]),
            rows=int(d["rows"]),
            bad_rows={str(k): int(v) for k, v in d["bad_rows"].items()},
            rows_padded=int(d.get("rows_padded", 0)),  # absent from older checkpoints
            done_units={int(u) for u in d["done_units"]},
            partial={int(u): [np.asarray(ids, np.int64)] for u, ids in d["partial"].items()},
            next_worker={int(r): tuple(int(x) for x in v) for r, v in d["next_worker"].items()},
        )
