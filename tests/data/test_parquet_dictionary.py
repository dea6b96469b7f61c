"""Id columns are read dictionary-encoded only where ids repeat (recsys.data.source)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from recsys.compose import load_config
from recsys.data import source
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.source import WorkUnit, read_parquet_unit
from recsys.schema import resolve_schema
from tests.synthetic import make_click_log


def _log(path: Path, rows: int) -> Path:
    table = pa.table(
        {
            "y": pa.array([i % 2 for i in range(rows)], pa.int32()),
            "repeating": [f"r{i % 50}" for i in range(rows)],
            "unique": [f"u{i:09d}" for i in range(rows)],
        }
    )
    pq.write_table(table, path, row_group_size=rows // 2)
    return path


def _read(path: Path, block_rows: int) -> list[pa.Table]:
    metadata = pq.read_metadata(path)
    tables = []
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        unit = WorkUnit(group, str(path), group, rows, 0, 0)
        tables += read_parquet_unit(
            pafs.LocalFileSystem(), unit, ["y", "repeating", "unique"], block_rows,
            ["repeating", "unique"],
        )  # fmt: skip
    return tables


@pytest.fixture(autouse=True)
def _small_wide_dictionaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "MIN_WIDE_DICTIONARY", 100)  # tiny logs, same rule
    source._WIDE_COLUMNS.clear()


def test_unique_ids_are_read_plain_and_repeating_ones_as_a_dictionary(tmp_path: Path) -> None:
    path = _log(tmp_path / "log.parquet", 20_000)
    tables = _read(path, block_rows=4096)
    assert len(tables) == 6  # 2 row groups of 10,000 rows in blocks of 4,096
    for table in tables:
        assert pa.types.is_dictionary(table.schema.field("repeating").type)
        assert pa.types.is_string(table.schema.field("unique").type)
    assert source._WIDE_COLUMNS[str(path)] == frozenset({"unique"})  # decided once per file
    whole = pa.concat_tables([t.cast(pq.read_schema(path)) for t in tables])
    assert whole.equals(pq.read_table(path))  # same rows, same order, nothing lost


def test_columns_with_more_distinct_ids_than_the_wide_share_are_read_plain(
    tmp_path: Path,
) -> None:
    """A third of the ids distinct: over WIDE_SHARE, so plain (Arrow would build a dictionary
    of them all at great memory cost); a tenth: a dictionary, which saves hashing."""
    rows = 6000
    path = tmp_path / "shares.parquet"
    third = [f"t{i % (rows // 3)}" for i in range(rows)]
    tenth = [f"d{i % (rows // 10)}" for i in range(rows)]
    pq.write_table(pa.table({"y": [1, 0] * (rows // 2), "repeating": tenth, "unique": third}),
                   path, row_group_size=rows)  # fmt: skip
    (table,) = _read(path, block_rows=rows)
    assert source._WIDE_COLUMNS[str(path)] == frozenset({"unique"})
    assert pa.types.is_dictionary(table.schema.field("repeating").type)
    assert table.column("unique").to_pylist() == third


def test_a_file_of_repeating_ids_keeps_every_id_column_a_dictionary(tmp_path: Path) -> None:
    path = tmp_path / "small.parquet"
    pq.write_table(pa.table({"y": [1, 0] * 500, "repeating": ["a", "b"] * 500,
                             "unique": ["c"] * 1000}), path)  # fmt: skip
    (table,) = _read(path, block_rows=4096)
    assert all(pa.types.is_dictionary(table.schema.field(c).type) for c in ("repeating", "unique"))


def test_files_read_differently_mix_in_one_buffer_and_hash_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file's zip codes are all distinct (read plain), the other's repeat (a dictionary):
    the loader's shuffle buffer mixes both, and every id hashes as it would either way."""
    root = tmp_path / "logs"
    root.mkdir()
    unique = make_click_log(600, seed=1)
    column = unique.schema.get_field_index("zip_prefix")
    unique = unique.set_column(column, "zip_prefix", pa.array([f"z{i}" for i in range(600)]))
    pq.write_table(unique, root / "part-0.parquet")
    pq.write_table(make_click_log(600, seed=2), root / "part-1.parquet")
    schema = resolve_schema(load_config([]).data, 16)
    options = LoaderOptions(batch_size=128, shuffle_buffer_rows=1000, seed=0)

    def batches() -> list:
        source._WIDE_COLUMNS.clear()
        loader = DataLoader(StreamingDataset(str(root), schema, options), batch_size=None)
        return list(loader)

    mixed = batches()
    assert source._WIDE_COLUMNS[str(root / "part-0.parquet")] == frozenset({"zip_prefix"})
    monkeypatch.setattr(source, "MIN_WIDE_DICTIONARY", 1 << 30)  # every id column a dictionary
    as_dictionaries = batches()
    assert len(mixed) == len(as_dictionaries) and sum(b.num_real_rows for b in mixed) == 1200
    for a, b in zip(mixed, as_dictionaries, strict=True):
        assert np.array_equal(a.row_ids.numpy(), b.row_ids.numpy())
        assert np.array_equal(a.sparse.values().numpy(), b.sparse.values().numpy())
