"""data.holdout: every row trained or validated, exactly once, over ranks x workers and resumes."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import mmh3
import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from recsys.compose import load_config
from recsys.config import DataFormat, HoldoutBy
from recsys.data.featurize import DataError
from recsys.data.holdout import HoldoutSplit
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.progress import EpochProgress
from recsys.data.source import SourceFormat
from recsys.schema import resolve_schema
from tests.synthetic import make_click_log

PARQUET = SourceFormat()


@pytest.fixture
def schema():
    return resolve_schema(load_config([]).data, 16)


def _write_parquet(root: Path) -> int:
    """Two files, uneven row groups: 1001 + 520 rows."""
    root.mkdir()
    for i, (rows, group) in enumerate([(1001, 300), (520, 499)]):
        pq.write_table(
            make_click_log(rows, 10 + i), root / f"part-{i}.parquet", row_group_size=group
        )
    return 1521


def _write_csv(root: Path, unit_bytes: int) -> tuple[SourceFormat, int]:
    """Two CSV files (genres '|'-joined), cut into small byte-range units."""
    root.mkdir()
    for i, rows in enumerate([700, 300]):
        table = make_click_log(rows, 10 + i)
        genres = [("|".join(g)) for g in table.column("genres").to_pylist()]
        table = table.set_column(table.schema.get_field_index("genres"), "genres", [genres])
        pacsv.write_csv(table, root / f"part-{i}.csv")
    return SourceFormat(DataFormat.csv, unit_bytes=unit_bytes), 1000


def _stream(path, schema, split, rank=0, world=1, source=PARQUET, **options):
    opts = LoaderOptions(batch_size=64, source=source, holdout=split, **options)
    return StreamingDataset(str(path), schema, opts, rank=rank, world_size=world)


def _row_ids(dataset: StreamingDataset, workers: int = 0) -> list[int]:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return [i for batch in loader for i in batch.position.row_ids.tolist()]


def _sides(path, schema, split, source=PARQUET, world=2, workers=2, **options):
    """Row ids read by the train side and by the validation side, over world x workers."""
    trained, validated = [], []
    for rank in range(world):
        train = _stream(path, schema, split, rank, world, source, **options)
        trained += _row_ids(train, workers)
        held = _stream(path, schema, replace(split, held_out=True), rank, world, source, **options)
        validated += _row_ids(held, workers)
    return trained, validated


def _all_ids(path, schema, source=PARQUET) -> list[int]:
    return sorted(_row_ids(_stream(path, schema, None, source=source)))


@pytest.mark.parametrize("shuffle", [False, True])
def test_parquet_tail_holds_out_the_last_rows_once_over_ranks_and_workers(
    tmp_path: Path, schema, shuffle: bool
) -> None:
    total = _write_parquet(tmp_path / "logs")
    shuffled = {"shuffle_buffer_rows": 200, "shuffle_files": True} if shuffle else {}
    split = HoldoutSplit(0.05, HoldoutBy.tail)
    trained, validated = _sides(tmp_path / "logs", schema, split, **shuffled)
    held = round(total * 0.05)  # 76: the last rows in file order (global positions)
    assert sorted(validated) == list(range(total - held, total))
    assert sorted(trained) == list(range(total - held))  # each once, none of the held ones
    train = _stream(tmp_path / "logs", schema, split)
    assert train.num_rows == total - held
    assert _stream(tmp_path / "logs", schema, replace(split, held_out=True)).num_rows == held


def test_hash_holds_out_a_seeded_share_of_rows_once(tmp_path: Path, schema) -> None:
    total = _write_parquet(tmp_path / "logs")
    split = HoldoutSplit(0.2, HoldoutBy.hash, seed=5)
    trained, validated = _sides(tmp_path / "logs", schema, split)
    assert len(trained) + len(validated) == total
    assert sorted(trained + validated) == list(range(total))
    assert abs(len(validated) - 0.2 * total) < 4 * np.sqrt(total * 0.2 * 0.8)
    assert max(validated) > total - 100 and min(validated) < 100  # spread, not a tail
    # Pinned: the rule is mmh3 of the row id's text, so the same rows on any machine.
    rule = [i for i in range(total) if mmh3.hash(str(i), 5, signed=False) < 0.2 * 2**32]
    assert sorted(validated) == rule and rule[:5] == [7, 11, 13, 19, 34]
    other = _sides(tmp_path / "logs", schema, replace(split, seed=6), world=1, workers=0)[1]
    assert sorted(other) != sorted(validated)


def test_text_tail_splits_the_unit_at_the_cut(tmp_path: Path, schema) -> None:
    source, total = _write_csv(tmp_path / "csv", unit_bytes=20_000)
    everything = _all_ids(tmp_path / "csv", schema, source)
    assert len(everything) == total
    split = HoldoutSplit(0.1, HoldoutBy.tail)
    trained, validated = _sides(tmp_path / "csv", schema, split, source)
    assert len(trained) + len(validated) == total and not set(trained) & set(validated)
    assert 0.07 * total < len(validated) < 0.13 * total  # ~10% of the bytes
    # Only the rows of the split unit's second half get new ids; the others keep theirs.
    kept = set(everything)
    assert set(trained) <= kept and len(set(validated) - kept) > 0
    assert len(set(everything) - set(trained)) == len(validated)


def test_tail_of_one_compressed_file_falls_back_to_hash(tmp_path: Path, schema, caplog) -> None:
    source, _ = _write_csv(tmp_path / "csv", unit_bytes=1 << 20)
    data = (tmp_path / "csv" / "part-0.csv").read_bytes()
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "part-0.csv.gz").write_bytes(gzip.compress(data))
    split = HoldoutSplit(0.1, HoldoutBy.tail)
    trained, validated = _sides(tmp_path / "gz", schema, split, source, world=1, workers=0)
    assert "data.holdout.by=hash" in caplog.text  # said, not silent
    assert len(trained) + len(validated) == 700 and not set(trained) & set(validated)
    assert 30 < len(validated) < 110


def test_fraction_holding_out_everything_is_an_error(tmp_path: Path, schema) -> None:
    _write_parquet(tmp_path / "logs")
    with pytest.raises(DataError, match=r"data\.holdout\.fraction=1\.0"):
        _stream(tmp_path / "logs", schema, HoldoutSplit(1.0, HoldoutBy.tail))


def test_resumed_train_side_reads_the_rest_of_its_rows_only(tmp_path: Path, schema) -> None:
    total = _write_parquet(tmp_path / "logs")
    split = HoldoutSplit(0.3, HoldoutBy.hash, seed=1)  # every unit mixed: the hard case
    options = {"shuffle_buffer_rows": 100, "seed": 2}
    batches = list(DataLoader(_stream(tmp_path / "logs", schema, split, **options), None))
    progress = EpochProgress(epoch=0)
    for batch in batches[:7]:
        progress.record(batch)
    resumed = _stream(tmp_path / "logs", schema, split, **options)
    resumed.set_epoch(0, resume=EpochProgress.from_state_dict(progress.state_dict()))
    first = [i for b in batches[:7] for i in b.position.row_ids.tolist()]
    rest = _row_ids(resumed, workers=2)
    validated = _sides(tmp_path / "logs", schema, split, world=1, workers=0)[1]
    assert len(first) + len(rest) + len(validated) == total
    assert sorted(first + rest + validated) == list(range(total))
