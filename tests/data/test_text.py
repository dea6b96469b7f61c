"""Text formats (CSV, TSV, Criteo) and hive-partitioned Parquet, read with real files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from recsys.compose import load_config
from recsys.config import ConfigError, DataConfig, DataFormat, FeatureKind, FeatureSpec, TableSpec
from recsys.data.batch import Batch
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.source import SourceFormat
from recsys.data.text import CRITEO_COLUMNS
from recsys.hashing import hash_id
from recsys.schema import resolve_schema
from tests.synthetic import make_click_log

SIZES = (1001, 37, 520)


@pytest.fixture
def schema():
    return resolve_schema(load_config([]).data, 16)


def as_text_table(table: pa.Table) -> pa.Table:
    """The id list column as "|"-joined text, as CSV/TSV files hold it."""
    i = table.schema.get_field_index("genres")
    return table.set_column(i, "genres", pc.binary_join(table["genres"], "|"))


def write_text(path: Path, table: pa.Table, delimiter: str = ",", header: bool = True) -> None:
    options = pacsv.WriteOptions(delimiter=delimiter, include_header=header)
    pacsv.write_csv(as_text_table(table), path, options)


def _write_logs(root: Path, suffix: str, delimiter: str, header: bool) -> int:
    root.mkdir()
    for i, rows in enumerate(SIZES):
        write_text(root / f"part-{i}.{suffix}", make_click_log(rows, 10 + i), delimiter, header)
    return sum(SIZES)


def _rows(batches) -> list[int]:
    return [i for b in batches for i in b.row_ids.tolist() if i >= 0]


COLUMNS = tuple(make_click_log(1, 0).column_names)


@pytest.mark.parametrize(
    ("fmt", "header", "buffer"),
    [(DataFormat.csv, True, 0), (DataFormat.tsv, True, 200), (DataFormat.tsv, False, 0)],
)
def test_text_every_row_exactly_once_over_2_ranks_x_2_workers(
    tmp_path: Path, schema, fmt: DataFormat, header: bool, buffer: int
) -> None:
    delimiter = "," if fmt is DataFormat.csv else "\t"
    total = _write_logs(tmp_path / "logs", fmt.value, delimiter, header)
    source = SourceFormat(fmt, header, None if header else COLUMNS, unit_bytes=997)
    options = LoaderOptions(batch_size=64, shuffle_buffer_rows=buffer, seed=3, source=source)
    seen: list[int] = []
    for rank in range(2):
        dataset = StreamingDataset(str(tmp_path / "logs"), schema, options, rank, world_size=2)
        assert len(dataset.units) > 3 * 10  # small units: files are cut into many ranges
        seen += _rows(DataLoader(dataset, batch_size=None, num_workers=2))
    assert len(seen) == total == len(set(seen))


def _all(dataset: StreamingDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batches: list[Batch] = list(dataset)
    real = [b.real_rows for b in batches]
    dense = torch.cat([b.dense[r] for b, r in zip(batches, real, strict=True)]).numpy()
    labels = torch.cat([b.labels[r] for b, r in zip(batches, real, strict=True)]).numpy()
    ids = torch.cat([b.sparse.values() for b in batches]).numpy()
    return dense, labels, ids


def test_csv_rows_featurize_like_parquet(tmp_path: Path, schema) -> None:
    """Same rows from CSV and from Parquet: same labels, dense values and hash buckets.

    zip_prefix holds "021"-style ids: read as numbers they would hash as 21 and differ.
    """
    table = make_click_log(300, seed=5)
    assert any(z.startswith("0") for z in table["zip_prefix"].to_pylist())
    pq.write_table(table, tmp_path / "log.parquet")
    write_text(tmp_path / "log.csv", table)
    csv = SourceFormat(DataFormat.csv, unit_bytes=4096)
    from_csv = _all(
        StreamingDataset(str(tmp_path / "log.csv"), schema, LoaderOptions(64, source=csv))
    )
    from_parquet = _all(StreamingDataset(str(tmp_path / "log.parquet"), schema, LoaderOptions(64)))
    for a, b in zip(from_csv, from_parquet, strict=True):
        np.testing.assert_array_equal(a, b)


def test_criteo_layout(tmp_path: Path) -> None:
    cfg = load_config(["data=criteo"]).data
    schema = resolve_schema(cfg, 16)
    ids = [f"{i:08x}" for i in range(26)]
    dense = ["3", "", "-1"] + ["7"] * 10
    lines = ["\t".join(["1", *dense, *ids]), "\t".join(["0", *[""] * 13, "", *ids[1:]])]
    (tmp_path / "day_0.tsv").write_text("\n".join(lines) + "\n")
    with gzip.open(tmp_path / "day_1.tsv.gz", "wt") as f:  # compressed files work too
        f.write("\n".join(lines) + "\n")
    options = LoaderOptions(batch_size=8, source=SourceFormat.from_config(cfg))
    batches = list(StreamingDataset(str(tmp_path), schema, options))
    assert len(CRITEO_COLUMNS) == 40 and _rows(batches) == sorted(_rows(batches))
    batch = batches[0]
    assert batch.num_real_rows == 4 and batch.labels[:4].tolist() == [1, 0, 1, 0]
    i1 = next(f for f in schema.dense_features if f.name == "I1")
    assert batch.dense[0, 0].item() == pytest.approx((np.log1p(3) - i1.mean) / i1.std, rel=1e-5)
    c1 = next(f for f in schema.sparse_features if f.name == "C1")
    kjt = batch.sparse["C1"].values().tolist()
    assert kjt[:2] == [hash_id(ids[0], c1.seed, schema.table("C1").num_buckets), 0]  # "" missing


def test_header_false_needs_columns(tmp_path: Path, schema) -> None:
    write_text(tmp_path / "a.csv", make_click_log(5, 1), header=False)
    source = SourceFormat(DataFormat.csv, header=False)
    with pytest.raises(ConfigError, match="data.columns"):
        StreamingDataset(str(tmp_path / "a.csv"), schema, LoaderOptions(8, source=source))
    source = SourceFormat(DataFormat.csv, header=False, columns=COLUMNS[:-1])
    with pytest.raises(ConfigError, match=r"release_year.*data.columns"):
        StreamingDataset(str(tmp_path / "a.csv"), schema, LoaderOptions(8, source=source))


def test_text_file_uri(tmp_path: Path, schema) -> None:
    write_text(tmp_path / "a.tsv", make_click_log(77, 1), "\t")
    source = SourceFormat(DataFormat.tsv, unit_bytes=512)
    dataset = StreamingDataset(
        (tmp_path / "a.tsv").as_uri(), schema, LoaderOptions(8, source=source)
    )
    assert len(_rows(dataset)) == 77


def test_hive_partitioned_parquet_folder(tmp_path: Path) -> None:
    data = DataConfig(
        name="t",
        train_path="x",
        features={
            "user_id": FeatureSpec(kind=FeatureKind.id, seed=1),
            "region": FeatureSpec(kind=FeatureKind.id, seed=2),
            "age": FeatureSpec(kind=FeatureKind.dense),
        },
        tables={"user_id": TableSpec(num_buckets=64), "region": TableSpec(num_buckets=16)},
    )
    schema = resolve_schema(data, 8)
    for region, rows in [("eu", 30), ("us", 45)]:
        folder = tmp_path / "logs" / "day=1" / f"region={region}"
        folder.mkdir(parents=True)
        pq.write_table(make_click_log(rows, seed=rows), folder / "part-0.parquet")
    dataset = StreamingDataset(str(tmp_path / "logs"), schema, LoaderOptions(batch_size=100))
    batch = next(iter(dataset))
    assert batch.num_real_rows == 75
    regions = batch.sparse["region"].values()[:75].tolist()
    assert regions == [hash_id("eu", 2, 16)] * 30 + [hash_id("us", 2, 16)] * 45
