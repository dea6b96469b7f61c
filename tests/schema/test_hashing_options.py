"""Per-table hashing options (double hashing, quotient-remainder): schema, ids, model, export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchrec import KeyedJaggedTensor

from recsys.compose import load_config
from recsys.config import (
    Combine,
    ConfigError,
    DataConfig,
    FeatureKind,
    FeatureSpec,
    LabelSpec,
    TableHashing,
    TableSpec,
)
from recsys.data.batch import Batch
from recsys.data.featurize import featurize
from recsys.export.manifest import Manifest
from recsys.export.scorer import Scorer
from recsys.hashing import MISSING_BUCKET, hash_id, second_seed
from recsys.model.layout import FIRST_ORDER_SUFFIX, FIRST_ORDER_WIDTH
from recsys.model.sparse import SparseArch
from recsys.schema import LookupPart, Schema, resolve_schema
from recsys.train.recipe import TrainResult, run
from tests.synthetic import make_train, write_tiny_log


def _schema(user: TableSpec, tags: TableSpec | None = None) -> Schema:
    data = DataConfig(
        name="t",
        train_path="x",
        label=LabelSpec(column="y"),
        features={
            "user": FeatureSpec(kind=FeatureKind.id, seed=1),
            "tags": FeatureSpec(kind=FeatureKind.id_list, seed=2, delimiter="|"),
        },
        tables={"user": user, "tags": tags or TableSpec(num_buckets=50)},
    )
    return resolve_schema(data, 8)


def test_plain_tables_keep_one_lookup_per_feature_named_after_it() -> None:
    schema = _schema(TableSpec(num_buckets=100))
    assert schema.lookup_keys == ["user", "tags"]
    assert [t.name for t in schema.tables] == ["user", "tags"]
    assert Schema.from_dict(schema.to_dict()) == schema


def test_qr_needs_far_fewer_rows_than_plain_for_the_same_buckets() -> None:
    n = 1_000_001
    plain = _schema(TableSpec(num_buckets=n))
    qr = _schema(TableSpec(num_buckets=n, hashing=TableHashing.qr))
    rows = {t.name: t.num_buckets for t in qr.tables}
    assert rows == {"user__q": 1 + 1000, "user__r": 1 + 1000, "tags": 50}  # R = sqrt(N - 1)
    assert rows["user__q"] + rows["user__r"] < plain.table("user").num_buckets / 400
    q, r = qr.lookups_of("user")
    assert (q.part, r.part) == (LookupPart.quotient, LookupPart.remainder)
    assert q.hash_buckets == r.hash_buckets == n and q.divisor == r.divisor == 1000
    custom = _schema(TableSpec(num_buckets=n, hashing=TableHashing.qr, qr_remainder=64))
    assert {t.name: t.num_buckets for t in custom.tables}["user__q"] == 1 + math.ceil(10**6 / 64)


def test_double_hashing_in_one_or_two_tables() -> None:
    same = _schema(TableSpec(num_buckets=100, hashing=TableHashing.double))
    assert same.table("user").features == ("user", "user__h2")
    first, second = same.lookups_of("user")
    assert (first.seed, second.seed) == (1, second_seed(1)) and second.table == "user"
    two = _schema(TableSpec(num_buckets=100, hashing=TableHashing.double, second_num_buckets=30))
    assert {t.name: t.num_buckets for t in two.tables} == {"user": 100, "user__h2": 30, "tags": 50}
    assert two.lookups_of("user")[1].hash_buckets == 30


@pytest.mark.parametrize(
    ("user", "tags", "match"),
    [
        (TableSpec(num_buckets=100, second_num_buckets=9), None, "user.second_num_buckets"),
        (TableSpec(num_buckets=100, qr_remainder=9), None, "user.qr_remainder"),
        (TableSpec(num_buckets=100, combine=Combine.product), None, "user.combine=product"),
        (
            TableSpec(num_buckets=100, hashing=TableHashing.qr, qr_remainder=99),
            None,
            "qr_remainder",
        ),
        (
            TableSpec(num_buckets=100),
            TableSpec(num_buckets=50, hashing=TableHashing.qr, combine=Combine.product),
            r"data.tables.tags.combine=product: id_list feature\(s\) \['tags'\]",
        ),
    ],
)
def test_bad_option_combinations_name_the_key(
    user: TableSpec, tags: TableSpec | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        _schema(user, tags)


def test_featurize_gives_every_lookup_its_rows() -> None:
    schema = _schema(
        TableSpec(num_buckets=101, hashing=TableHashing.qr, qr_remainder=7),
        TableSpec(num_buckets=50, hashing=TableHashing.double, second_num_buckets=20),
    )
    records = pa.table({"y": [1, 0, 1], "user": ["u1", None, "u3"], "tags": ["a|b", "", "|c"]})
    arrays = featurize(records, schema)
    users = ["u1", None, "u3"]
    buckets = np.array([hash_id(u, 1, 101) for u in users])
    np.testing.assert_array_equal(
        arrays.ids["user__q"], np.where(buckets > 0, 1 + (buckets - 1) // 7, 0)
    )
    np.testing.assert_array_equal(
        arrays.ids["user__r"], np.where(buckets > 0, 1 + (buckets - 1) % 7, 0)
    )
    assert arrays.ids["user__q"][1] == arrays.ids["user__r"][1] == MISSING_BUCKET
    assert arrays.ids["tags"].tolist() == [hash_id(t, 2, 50) for t in "abc"]
    assert arrays.ids["tags__h2"].tolist() == [hash_id(t, second_seed(2), 20) for t in "abc"]
    for key in ("tags", "tags__h2"):  # the empty entry of "|c" is dropped from both bags
        assert arrays.lengths[key].tolist() == [2, 0, 1]
    batch = Batch.from_arrays(arrays, schema, np.arange(3), size=4)
    assert batch.sparse.keys() == ["user__q", "user__r", "tags", "tags__h2"]


@pytest.mark.parametrize("bias_in_rows", [False, True])
@pytest.mark.parametrize("combine", [Combine.product, Combine.sum])
def test_sparse_arch_combines_quotient_and_remainder_rows(
    combine: Combine, bias_in_rows: bool
) -> None:
    schema = _schema(TableSpec(num_buckets=101, hashing=TableHashing.qr, combine=combine))
    arch = SparseArch(schema, first_order=True, bias_in_rows=bias_in_rows)
    tables = arch.embedding_bags.embedding_bags
    with torch.no_grad():
        for module in tables.values():
            module.weight.copy_(torch.randn_like(module.weight))
    arrays = featurize(pa.table({"y": [1, 1], "user": ["x", "y"], "tags": ["a", "b|c"]}), schema)
    vectors, first_order = arch(Batch.from_arrays(arrays, schema, np.arange(2)).sparse)
    q, r = torch.from_numpy(arrays.ids["user__q"]), torch.from_numpy(arrays.ids["user__r"])
    rows = {"user__q": q, "user__r": r}
    # Folded: a row is the embedding's 8 columns, then the bias's; else a bias table apiece.
    eq, er = (tables[t].weight[i][:, :8] for t, i in rows.items())
    expected = eq * er if combine is Combine.product else eq + er
    torch.testing.assert_close(vectors[:, :8], expected, rtol=0, atol=1e-6)
    if not bias_in_rows:
        bias = sum(tables[t + FIRST_ORDER_SUFFIX].weight[i].sum(1) for t, i in rows.items())
    else:
        bias = sum(tables[t].weight[i][:, 8:].mean(1) for t, i in rows.items())  # row: mean
    torch.testing.assert_close(first_order[:, 0], bias, rtol=0, atol=1e-6)  # biases: summed


def test_folded_biases_start_at_zero_even_where_the_row_starts_near_one() -> None:
    schema = _schema(TableSpec(num_buckets=101, hashing=TableHashing.qr, combine=Combine.product))
    tables = SparseArch(schema, first_order=True, bias_in_rows=True).embedding_bags.embedding_bags
    remainder = tables["user__r"].weight
    assert remainder.shape[1] == 8 + FIRST_ORDER_WIDTH
    assert (remainder[:, :8] - 1).abs().max() < 0.5 and not remainder[:, 8:].any()
    assert all(not t.weight[:, -FIRST_ORDER_WIDTH:].any() for t in tables.values())


def test_product_remainder_table_starts_near_one() -> None:
    schema = _schema(
        TableSpec(num_buckets=10_001, hashing=TableHashing.qr, combine=Combine.product)
    )
    weights = SparseArch(schema, first_order=False).embedding_bags.embedding_bags
    assert (weights["user__r"].weight - 1).abs().max() <= 0.1
    assert weights["user__q"].weight.abs().max() <= 0.1


def test_plain_kjt_is_unchanged_for_plain_schemas() -> None:
    schema = _schema(TableSpec(num_buckets=100))
    arrays = featurize(pa.table({"y": [1], "user": ["x"], "tags": ["a"]}), schema)
    kjt = Batch.from_arrays(arrays, schema, np.arange(1)).sparse
    assert isinstance(kjt, KeyedJaggedTensor) and kjt.keys() == ["user", "tags"]


# ---------------------------------------------------------------- train -> export -> score

OPTIONS = [
    # quotient-remainder with product on a single-id feature, sum on another
    "data.tables.user_id.hashing=qr",
    "data.tables.user_id.combine=product",
    "data.tables.zip_prefix.hashing=qr",
    "data.tables.zip_prefix.qr_remainder=16",
    # double hashing into a second table, and into the same table for an id list
    "data.tables.item_id.hashing=double",
    "data.tables.item_id.second_num_buckets=128",
    "data.tables.genres.hashing=double",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    root = tmp_path_factory.mktemp("hashing_options")
    log = write_tiny_log(root)
    overrides = log.overrides + OPTIONS + ["tracking=none", "trainer.epochs=2"]
    return run(load_config(overrides, output_dir=str(root / "out"))), log.eval


def test_scorer_reproduces_training_with_double_and_qr_hashing(trained) -> None:
    result, eval_path = trained
    assert result.metrics["eval/auc"] > 0.55, result.metrics  # it learns through the options
    predictions = pq.read_table(result.predictions_path)["prob"].to_numpy()
    scores = Scorer(result.export_dir).score(pq.read_table(eval_path))
    np.testing.assert_allclose(scores, predictions, rtol=0, atol=1e-5)


def test_manifest_pins_every_lookup(trained) -> None:
    result, _ = trained
    raw = json.loads((result.export_dir / "manifest.json").read_text())
    lookups = {lk["key"]: lk for lk in raw["lookups"]}
    assert lookups["user_id__q"] | {"divisor": 0} == {
        "key": "user_id__q",
        "feature": "user_id",
        "column": "user_id",
        "table": "user_id__q",
        "function": "mmh3_x86_32_unsigned",
        "seed": 101,
        "hash_buckets": 512,
        "part": "quotient",
        "divisor": 0,
        "table_rows": 1 + math.ceil(511 / 23),
        "combine": "product",
    }
    assert lookups["user_id__q"]["divisor"] == lookups["user_id__r"]["divisor"] == 23
    assert lookups["item_id__h2"]["seed"] == second_seed(102)
    assert lookups["item_id__h2"]["hash_buckets"] == lookups["item_id__h2"]["table_rows"] == 128
    assert lookups["genres__h2"]["table"] == "genres"
    tables = Manifest.load(result.export_dir).tables
    for name, rows in [("user_id__r", 24), ("zip_prefix__r", 17), ("item_id__h2", 128)]:
        assert tables[name]["num_buckets"] == rows
        assert np.load(result.export_dir / tables[name]["file"]).shape == (rows, 16)
    assert "user_id" not in tables  # a qr table exists only as its two factors


@pytest.mark.parametrize("model", ["dlrm", "dcn"])
def test_every_head_takes_qr_and_double_hashed_features(model: str) -> None:
    from recsys.config import ModelConfig
    from recsys.model.click import build_model

    schema = _schema(
        TableSpec(num_buckets=101, hashing=TableHashing.qr, combine=Combine.product),
        TableSpec(num_buckets=50, hashing=TableHashing.double),
    )
    records = pa.table({"y": [1, 0], "user": ["x", "y"], "tags": ["a", "b|c"]})
    batch = Batch.from_arrays(featurize(records, schema), schema, np.arange(2))
    net = build_model(schema, ModelConfig(name=model, embedding_dim=8))
    logits = net(batch.dense, batch.sparse)
    assert logits.shape == (2,) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_shard_the_physical_tables_and_export_them(tiny_log, tmp_path: Path) -> None:
    """qr and double-hashed tables sharded table-wise over 2 gloo ranks; export from shards."""

    overrides = tiny_log.overrides + OPTIONS + ["tracking=none", "sharding=table_wise"]
    proc = make_train(2, tmp_path / "two", overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = (tmp_path / "two" / "sharding_plan.txt").read_text()
    assert "user_id__q" in plan and "item_id__h2" in plan and "rank:1/cpu" in plan, plan
    predictions = pq.read_table(tmp_path / "two" / "eval_predictions.parquet")["prob"]
    scores = Scorer(tmp_path / "two" / "export").score(pq.read_table(tiny_log.eval))
    np.testing.assert_allclose(scores, predictions.to_numpy(), rtol=0, atol=1e-5)
