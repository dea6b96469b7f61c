"""Export tables written from shards: every rank writes its own rows and columns in bounded
chunks, and the files equal those of a single process holding whole tables."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.compose import load_config
from recsys.config import TableDtype
from recsys.export.manifest import MANIFEST_FILE
from recsys.export.scorer import Scorer
from recsys.export.tables import ExportGroup, TableShards, create_npy, read_chunks, write_blocks
from recsys.export.writer import write_export
from recsys.model.layout import ModelWeights
from recsys.model.registry import build_head, head_config
from recsys.schema import resolve_schema
from tests.processes import free_port, gloo_group
from tests.synthetic import write_tiny_log


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _split(table: torch.Tensor, how: str, parts: int = 2) -> list[TableShards]:
    """The shards `parts` ranks would hold under a TorchRec sharding type."""
    shape, (rows, columns) = tuple(table.shape), table.shape
    if how == "row_wise":
        bounds = np.linspace(0, rows, parts + 1).astype(int)
        return [TableShards(shape, [(a, 0, table[a:b])]) for a, b in itertools.pairwise(bounds)]
    if how == "column_wise":
        bounds = np.linspace(0, columns, parts + 1).astype(int)
        return [TableShards(shape, [(0, a, table[:, a:b])]) for a, b in itertools.pairwise(bounds)]
    # table_wise / replicated: one rank holds it all, the others nothing
    return [TableShards(shape, [(0, 0, table)])] + [TableShards(shape)] * (parts - 1)


@pytest.mark.parametrize("how", ["row_wise", "column_wise", "table_wise"])
def test_shards_written_in_small_chunks_make_the_table(tmp_path: Path, how: str) -> None:
    table = torch.randn(1001, 12)
    path = tmp_path / "t.npy"
    create_npy(path, table.shape, np.float32)
    for shards in _split(table, how):
        write_blocks(path, shards, chunk_bytes=12 * 4 * 37)  # 37 rows (or fewer) at a time
    np.testing.assert_array_equal(np.load(path), table.numpy())
    chunks = list(read_chunks(path, chunk_bytes=12 * 4 * 100))
    assert [start for start, _ in chunks] == list(range(0, 1001, 100))
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), table.numpy())


@pytest.mark.parametrize("how", ["row_wise", "column_wise", "table_wise"])
@pytest.mark.parametrize("columns", [slice(0, 16), slice(16, 20), slice(3, 18)])
def test_shards_cut_to_columns_write_those_columns(
    tmp_path: Path, how: str, columns: slice
) -> None:
    # A folded bias is the last columns of its table's rows: export cuts them out per shard.
    table = torch.randn(101, 20)
    path = tmp_path / "t.npy"
    wanted = table[:, columns]
    create_npy(path, wanted.shape, np.float32)
    for shards in _split(table, how, parts=3):
        cut = shards.columns(columns)
        assert cut.shape == tuple(wanted.shape)
        write_blocks(path, cut, chunk_bytes=4 * 7 * 20)
    np.testing.assert_array_equal(np.load(path), wanted.numpy())


def test_a_block_outside_the_table_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    create_npy(path, (10, 4), np.float32)
    with pytest.raises(ValueError, match="outside the table"):
        write_blocks(path, TableShards((10, 4), [(8, 0, torch.zeros(3, 4))]))


# ------------------------------------------------------------------ two ranks, one export


def _model(overrides: list[str]):
    cfg = load_config(overrides + ["tracking=none"])
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    config = head_config(schema, cfg.model)
    torch.manual_seed(0)
    tables = {t.name: torch.randn(t.num_buckets, t.embedding_dim) for t in schema.tables}
    first_order = {n: torch.randn(w.shape[0], 4) for n, w in tables.items()}
    return schema, config, ModelWeights(tables, first_order, build_head(config).state_dict())


def _worker(rank: int, port: int, root: str, dtype: str, overrides: list[str]) -> None:
    with gloo_group(rank, port):
        schema, config, whole = _model(overrides)
        kinds = ["row_wise", "column_wise", "table_wise"]  # one per table, in turn
        tables = {n: _split(t, kinds[i % 3])[rank] for i, (n, t) in enumerate(whole.tables.items())}
        biases = {n: _split(t, "row_wise")[rank] for n, t in whole.first_order.items()}
        local = ModelWeights(tables, biases, whole.dense if rank == 0 else {})
        group = ExportGroup(rank, 2, dist.barrier, token="shared")
        write_export(Path(root) / "two", schema, config, local, table_dtype=dtype, group=group)


@pytest.mark.distributed
@pytest.mark.parametrize("dtype", [TableDtype.fp32, TableDtype.int8])
def test_two_ranks_write_the_export_one_process_writes(tmp_path: Path, dtype: TableDtype) -> None:
    overrides = write_tiny_log(tmp_path).overrides
    args = (free_port(), str(tmp_path), dtype.value, overrides)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    schema, config, whole = _model(overrides)
    one = write_export(tmp_path / "one", schema, config, whole, table_dtype=dtype)
    two = tmp_path / "two"
    manifests = [json.loads((d / MANIFEST_FILE).read_text()) for d in (one, two)]
    assert manifests[0]["tables"] == manifests[1]["tables"]  # files, shapes and checksums
    assert sorted(p.name for p in two.iterdir()) == ["dense.pt", MANIFEST_FILE, "tables"]
    Scorer(two)  # verifies every checksum
