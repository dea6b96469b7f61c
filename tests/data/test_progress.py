"""Resumable position: a resumed epoch yields exactly the rows not yet trained on."""

from __future__ import annotations

import pickle
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from recsys.compose import load_config
from recsys.data.batch import Batch
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.progress import EpochProgress
from recsys.schema import resolve_schema
from tests.synthetic import make_click_log


@pytest.fixture
def schema():
    return resolve_schema(load_config([]).data, 16)


@pytest.fixture
def logs(tmp_path: Path) -> tuple[str, int]:
    root = tmp_path / "logs"
    root.mkdir()
    sizes = [(701, 150), (37, 10), (420, 99)]
    for i, (rows, group) in enumerate(sizes):
        pq.write_table(make_click_log(rows, 20 + i), root / f"p{i}.parquet", row_group_size=group)
    return str(root), sum(r for r, _ in sizes)


def _batches(dataset: StreamingDataset, workers: int) -> list[Batch]:
    return list(DataLoader(dataset, batch_size=None, num_workers=workers))


def _ids(batches: list[Batch]) -> list[list[int]]:
    return [b.position.row_ids.tolist() for b in batches]


def _record(batches: list[Batch], epoch: int = 0) -> EpochProgress:
    progress = EpochProgress(epoch=epoch)
    for batch in batches:
        progress.record(batch)
    return progress


def _reload(progress: EpochProgress) -> EpochProgress:
    """Through a checkpoint: plain values, pickled."""
    return EpochProgress.from_state_dict(pickle.loads(pickle.dumps(progress.state_dict())))


@pytest.mark.parametrize("taken", [5, 8])  # odd: the next batch is worker 1's
def test_same_layout_resumes_with_identical_batches(schema, logs, taken: int) -> None:
    path, total = logs
    options = LoaderOptions(batch_size=32, seed=1)
    full = _batches(StreamingDataset(path, schema, options), workers=2)
    progress = _reload(_record(full[:taken]))
    assert progress.rows == 32 * taken
    resumed = StreamingDataset(path, schema, options)
    resumed.set_epoch(0, resume=progress)
    rest = _batches(resumed, workers=2)
    assert _ids(rest) == _ids(full[taken:])
    first, again = rest[0], full[taken]
    assert np.array_equal(first.dense.numpy(), again.dense.numpy())
    assert np.array_equal(first.sparse.values().numpy(), again.sparse.values().numpy())


@pytest.mark.parametrize(("buffer", "files"), [(0, False), (150, True)])
def test_two_ranks_resume_on_three(schema, logs, buffer: int, files: bool) -> None:
    path, total = logs
    options = LoaderOptions(batch_size=16, shuffle_buffer_rows=buffer, shuffle_files=files, seed=4)
    parts, recorded = [], []
    for rank, taken in [(0, 7), (1, 12)]:
        dataset = StreamingDataset(path, schema, options, rank=rank, world_size=2)
        dataset.set_epoch(1)
        batches = list(islice(iter(DataLoader(dataset, batch_size=None, num_workers=2)), taken))
        progress = dataset.new_progress()
        for batch in batches:
            progress.record(batch)
        parts.append(progress)
        recorded += [i for ids in _ids(batches) for i in ids]
    merged = _reload(EpochProgress.merge(parts))
    assert merged.epoch == 1 and merged.rows == len(recorded) == 16 * 19
    rest: list[int] = []
    for rank in range(3):
        dataset = StreamingDataset(path, schema, options, rank=rank, world_size=3)
        dataset.set_epoch(1, resume=merged)
        rest += [i for ids in _ids(_batches(dataset, workers=2)) for i in ids]
    assert len(rest) == len(set(rest))  # no duplicates
    assert sorted(rest + recorded) == list(range(total))


def test_resumed_progress_keeps_counting(schema, logs) -> None:
    """Resume twice: progress recorded on a resumed epoch adds to the one it resumed from."""
    path, total = logs
    options = LoaderOptions(batch_size=40)
    first = StreamingDataset(path, schema, options)
    progress = _record(list(islice(iter(first), 6)))
    second = StreamingDataset(path, schema, options)
    second.set_epoch(0, resume=progress)
    for batch in islice(iter(second), 9):
        progress.record(batch)
    third = StreamingDataset(path, schema, options)
    third.set_epoch(0, resume=_reload(progress))
    rows = [i for ids in _ids(list(third)) for i in ids]
    assert progress.rows + len(rows) == total
    assert rows == list(range(40 * 15, total))


def test_padding_and_epoch_mismatch(schema, logs) -> None:
    path, _ = logs
    progress = EpochProgress(epoch=2)
    progress.record(Batch.padding(schema, 8))
    assert progress.rows == 0 and not progress.partial
    dataset = StreamingDataset(path, schema, LoaderOptions(batch_size=8))
    with pytest.raises(ValueError, match="epoch 2, not epoch 3"):
        dataset.set_epoch(3, resume=progress)
