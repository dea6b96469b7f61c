"""Managed collisions (`data.tables.<t>.hashing: managed`): config, remap, train, resume, serve."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torchrec import KeyedJaggedTensor

from recsys.compose import load_config
from recsys.config import (
    ConfigError,
    DataConfig,
    FeatureKind,
    FeatureSpec,
    LabelSpec,
    ManagedEviction,
    ManagedSpec,
    TableHashing,
    TableSpec,
)
from recsys.data.featurize import featurize
from recsys.export.manifest import Manifest, Remap
from recsys.export.scorer import Scorer
from recsys.model.layout import FIRST_ORDER_SUFFIX
from recsys.model.sparse import SparseArch
from recsys.schema import Schema, resolve_schema
from recsys.train.checkpoint_layout import read_meta
from recsys.train.recipe import run
from tests.synthetic import TinyLog

MANAGED = ["data.tables.user_id.hashing=managed", "data.tables.user_id.num_buckets=16"]
TOL = 1e-5


def _schema(user: TableSpec) -> Schema:
    data = DataConfig(
        name="t",
        train_path="x",
        label=LabelSpec(column="y"),
        features={"user": FeatureSpec(kind=FeatureKind.id, seed=1), "item": FeatureSpec()},
        tables={"user": user, "item": TableSpec(num_buckets=50)},
    )
    return resolve_schema(data, 8)


def _managed(rows: int = 4, **options) -> Schema:
    spec = ManagedSpec(**options)
    return _schema(TableSpec(num_buckets=rows, hashing=TableHashing.managed, managed=spec))


def _batch(users: list[int]) -> KeyedJaggedTensor:
    n = len(users)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"],
        values=torch.tensor(users + [1] * n),
        lengths=torch.ones(2 * n, dtype=torch.long),
    )


def _rows(arch: SparseArch, users: list[int]) -> list[int]:
    """Rows the users' ids read now (a training step: counts them, maybe reassigns rows)."""
    _, remapped = arch.managed(_batch(users))
    return remapped.values().tolist()


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.tables.user_id.managed.admit_after=0", "data.tables.user_id.managed.admit_after=0"),
        (
            "data.tables.user_id.managed.eviction_interval=0",
            "data.tables.user_id.managed.eviction_interval=0",
        ),
        ("data.tables.user_id.managed.input_hash_size=8589934592", "at most 4294967297"),
    ],
)
def test_bad_managed_options_fail_naming_the_key(
    tiny_log: TinyLog, override: str, message: str
) -> None:
    cfg = load_config(tiny_log.overrides + MANAGED + [override, "tracking=none"])
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        resolve_schema(cfg.data, cfg.model.embedding_dim)


def test_managed_options_on_a_hashed_table_are_refused() -> None:
    spec = TableSpec(num_buckets=8, managed=ManagedSpec(admit_after=3))
    with pytest.raises(ConfigError, match=r"data.tables.user.managed applies to hashing=managed"):
        _schema(spec)


def test_managed_schema_round_trips_and_leaves_other_schemas_unchanged() -> None:
    managed = _managed(eviction=ManagedEviction.lru, admit_after=3, eviction_interval=5)
    assert Schema.from_dict(managed.to_dict()) == managed
    user = managed.table("user")
    assert user.managed.admit_after == 3 and user.managed.eviction is ManagedEviction.lru
    assert managed.lookups_of("user")[0].hash_buckets == 2**32 + 1  # the 32-bit hash itself
    plain = _schema(TableSpec(num_buckets=8))
    # No `managed` key unless set: fingerprints of schemas saved before it do not move.
    assert all("managed" not in t for t in plain.to_dict()["tables"])


# ------------------------------------------------------------------------------ the remap


def test_an_id_gets_a_row_only_after_admit_after_sightings_others_share_the_fallback() -> None:
    arch = SparseArch(_managed(rows=4, admit_after=2), first_order=True)
    fallback = 3  # the table's last row
    first = _rows(arch, [7, 7, 9])
    assert first[0] == first[1] != fallback and first[2] == fallback  # 9 seen once: no row
    assert _rows(arch, [9, 5]) == [fallback, fallback]  # once per window is never enough
    assert _rows(arch, [5, 5])[0] != fallback
    # Biases are read with the same rows as the embeddings.
    vectors, biases = arch(_batch([7, 9]))
    bias = arch.managed_bias.embedding_bags["user" + FIRST_ORDER_SUFFIX].weight
    rows = _rows_without_counting(arch, [7, 9])
    item_bias = arch.embedding_bags.embedding_bags["item" + FIRST_ORDER_SUFFIX].weight[1].sum()
    expected = bias[rows].sum(dim=1) + item_bias
    torch.testing.assert_close(biases.sum(dim=1), expected, rtol=0, atol=1e-6)
    table = arch.managed._embedding_module.embedding_bags["user"].weight
    torch.testing.assert_close(vectors[:, :8], table[rows], rtol=0, atol=0)


def _rows_without_counting(arch: SparseArch, users: list[int]) -> list[int]:
    arch.eval()
    try:
        return _rows(arch, users)
    finally:
        arch.train()


def test_lfu_evicts_the_least_seen_id_when_a_more_frequent_one_arrives() -> None:
    arch = SparseArch(_managed(rows=3, eviction=ManagedEviction.lfu), first_order=True)
    a, _, _, b = _rows(arch, [1, 1, 1, 2])  # two rows to hand out (the third: the fallback)
    assert len({a, b, 2}) == 3
    c = _rows(arch, [3] * 5)[0]  # 3 seen 5 times beats 2 (seen once)
    assert c == b
    assert _rows_without_counting(arch, [1, 2, 3]) == [a, 2, b]  # 2 evicted: the fallback


# ------------------------------------------------------------------------------ train, serve


def _train(log: TinyLog, out: Path, extra: list[str]) -> dict[str, float]:
    overrides = log.overrides + ["tracking=none", "trainer.epochs=1", *MANAGED, *extra]
    return run(load_config(overrides, output_dir=str(out))).metrics


def test_trains_and_the_scorer_reproduces_the_remap_unseen_and_evicted_ids_included(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    # 16 rows for 60 users: ids keep losing and winning rows; admit_after=2 in windows of 2 steps.
    options = [
        "data.tables.user_id.managed.admit_after=2",
        "data.tables.user_id.managed.eviction_interval=2",
    ]
    metrics = _train(tiny_log, tmp_path / "run", options)
    assert metrics["eval/auc"] > 0.55
    export = tmp_path / "run" / "export"
    manifest = Manifest.load(export)
    assert manifest.raw["format_version"] == 3
    remap_entry = manifest.tables["user_id"]["remap"]
    assert remap_entry["fallback_rows"] == [15]
    assert 0 < remap_entry["ids_with_rows"] <= 15
    scorer = Scorer(export)
    records = pq.read_table(tiny_log.eval)
    predicted = pq.read_table(tmp_path / "run" / "eval_predictions.parquet")["prob"].to_numpy()
    np.testing.assert_allclose(scorer.score(records), predicted, rtol=0, atol=TOL)
    # The last 200 eval rows are users training never saw: all on the fallback row; and with
    # 60 users for 15 rows, some seen users lost or never got one (evicted / not admitted).
    remap: Remap = scorer.remaps["user_id"]
    ids = featurize(records, scorer.schema, with_labels=False).ids["user_id"]
    rows = remap(ids)
    assert (rows[800:] == 15).all()
    assert (rows[:800] == 15).any() and (rows[:800] != 15).any()


DETERMINISTIC = [
    "trainer.deterministic=true",
    "trainer.shuffle_buffer=0",
    "trainer.shuffle_files=false",
    "trainer.epochs=2",
    "trainer.checkpoint.every_n_steps=7",
    "trainer.checkpoint.keep_last=100",
]


def test_resume_from_a_checkpoint_restores_the_remap_and_ends_like_the_full_run(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    full = _train(tiny_log, tmp_path / "full", DETERMINISTIC)
    checkpoints = sorted((tmp_path / "full" / "checkpoints").iterdir(), key=os.path.getmtime)
    mid = next(c for c in checkpoints if read_meta(c)["epoch"] == 1)
    resumed = _train(tiny_log, tmp_path / "resumed", [*DETERMINISTIC, f"trainer.resume={mid}"])
    for key in ("eval/auc", "eval/log_loss"):
        assert abs(resumed[key] - full[key]) <= 1e-6, key
    probs = [
        pq.read_table(tmp_path / r / "eval_predictions.parquet")["prob"].to_numpy()
        for r in ("full", "resumed")
    ]
    np.testing.assert_allclose(probs[1], probs[0], rtol=0, atol=1e-6)
    remaps = [
        json.loads((tmp_path / r / "export" / "manifest.json").read_text())["tables"]["user_id"]
        for r in ("full", "resumed")
    ]
    assert remaps[0]["remap"]["sha256"] == remaps[1]["remap"]["sha256"]
