"""Streaming: every row exactly once across ranks x workers; errors point at file and row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from recsys.compose import load_config
from recsys.data.batch import Batch
from recsys.data.featurize import DataError
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.schema import resolve_schema
from tests.synthetic import make_click_log


@pytest.fixture
def schema():
    return resolve_schema(load_config([]).data, 16)


def _write_uneven(root: Path) -> int:
    """Three files, odd sizes, odd row groups: 1001 + 37 + 520 rows."""
    root.mkdir()
    sizes = [(1001, 300), (37, 10), (520, 499)]
    for i, (rows, group) in enumerate(sizes):
        pq.write_table(
            make_click_log(rows, seed=10 + i), root / f"part-{i}.parquet", row_group_size=group
        )
    (root / "_SUCCESS").write_text("")  # writers' marker files are skipped
    return sum(r for r, _ in sizes)


def _row_ids(dataset: StreamingDataset, workers: int) -> list[int]:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return [i for batch in loader for i in batch.row_ids.tolist() if i >= 0]  # -1: padding


@pytest.mark.parametrize(("buffer", "files"), [(0, False), (200, True), (200, False)])
def test_every_row_exactly_once_over_2_ranks_x_2_workers(
    tmp_path: Path, schema, buffer: int, files: bool
) -> None:
    total = _write_uneven(tmp_path / "logs")
    options = LoaderOptions(batch_size=64, shuffle_buffer_rows=buffer, shuffle_files=files, seed=3)
    seen: list[int] = []
    for rank in range(2):
        dataset = StreamingDataset(str(tmp_path / "logs"), schema, options, rank=rank, world_size=2)
        seen += _row_ids(dataset, workers=2)
    assert len(seen) == total
    assert sorted(seen) == list(range(total))


def test_glob_and_single_file_paths(tmp_path: Path, schema) -> None:
    total = _write_uneven(tmp_path / "logs")
    options = LoaderOptions(batch_size=100)
    assert (
        StreamingDataset(str(tmp_path / "logs" / "part-*.parquet"), schema, options).num_rows
        == total
    )
    assert (
        StreamingDataset(str(tmp_path / "logs" / "part-1.parquet"), schema, options).num_rows == 37
    )
    uri = (tmp_path / "logs").as_uri()  # a pyarrow filesystem URI works where a path does
    assert sorted(_row_ids(StreamingDataset(uri, schema, options), 0)) == list(range(total))


def test_shuffle_is_seeded_and_changes_per_epoch(tmp_path: Path, schema) -> None:
    _write_uneven(tmp_path / "logs")
    options = LoaderOptions(batch_size=50, shuffle_buffer_rows=300, shuffle_files=True, seed=7)
    first = StreamingDataset(str(tmp_path / "logs"), schema, options)
    again = StreamingDataset(str(tmp_path / "logs"), schema, options)
    assert _row_ids(first, 0) == _row_ids(again, 0)
    epoch0 = _row_ids(first, 0)
    first.set_epoch(1)
    assert _row_ids(first, 0) != epoch0
    assert _row_ids(first, 0) != sorted(epoch0)


def test_no_shuffle_keeps_file_order(tmp_path: Path, schema) -> None:
    total = _write_uneven(tmp_path / "logs")
    dataset = StreamingDataset(str(tmp_path / "logs"), schema, LoaderOptions(batch_size=64))
    assert _row_ids(dataset, 0) == list(range(total))


def test_buffer_without_file_shuffle_only_mixes_nearby_rows(tmp_path: Path, schema) -> None:
    _write_uneven(tmp_path / "logs")
    options = LoaderOptions(batch_size=50, shuffle_buffer_rows=300, seed=1)
    ids = _row_ids(StreamingDataset(str(tmp_path / "logs"), schema, options), 0)
    assert ids != sorted(ids)
    # A row never travels further than a buffer plus the leftover of the one before it.
    assert max(abs(pos - row) for pos, row in enumerate(ids)) < 2 * 300 + 50


def test_batches_carry_schema_features(tmp_path: Path, schema) -> None:
    _write_uneven(tmp_path / "logs")
    batch = next(
        iter(StreamingDataset(str(tmp_path / "logs"), schema, LoaderOptions(batch_size=32)))
    )
    assert isinstance(batch, Batch) and batch.size == 32
    assert batch.sparse.keys() == [f.name for f in schema.sparse_features]
    assert batch.dense.shape == (32, len(schema.dense_features))
    assert torch.all(batch.weights == 1)
    assert set(batch.labels.unique().tolist()) <= {0.0, 1.0}


def test_missing_path_is_a_clear_error(tmp_path: Path, schema) -> None:
    with pytest.raises(DataError, match="matches no files"):
        StreamingDataset(str(tmp_path / "nope" / "*.parquet"), schema, LoaderOptions(batch_size=8))


def test_truncated_file_is_a_clear_error(tmp_path: Path, schema) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(make_click_log(100, seed=1), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"bad\.parquet.*cannot be read as Parquet"):
        StreamingDataset(str(path), schema, LoaderOptions(batch_size=8))


def test_missing_column_names_file_and_column(tmp_path: Path, schema) -> None:
    path = tmp_path / "nocol.parquet"
    pq.write_table(make_click_log(50, seed=1).drop(["zip_prefix"]), path)
    dataset = StreamingDataset(str(path), schema, LoaderOptions(batch_size=8))
    with pytest.raises(DataError, match=r"nocol\.parquet.*zip_prefix"):
        next(iter(dataset))


def test_bad_label_names_file_row_column_and_value(tmp_path: Path, schema) -> None:
    table = make_click_log(50, seed=1)
    labels = table["label"].to_numpy().copy()
    labels[17] = 5
    path = tmp_path / "label.parquet"
    pq.write_table(table.set_column(0, "label", pa.array(labels, pa.int8())), path)
    dataset = StreamingDataset(str(path), schema, LoaderOptions(batch_size=8))
    with pytest.raises(DataError, match=r"label\.parquet, row 17, column 'label'.*5"):
        list(dataset)


def test_padding_batch_has_zero_weight(schema) -> None:
    padding = Batch.padding(schema)
    assert padding.weights.sum().item() == 0
    assert padding.sparse.keys() == [f.name for f in schema.sparse_features]
    assert np.all(padding.row_ids.numpy() == -1)
