"""Incremental days (`make train-days`): three tiny days through the real recipe, MLflow store,
exports and delta exports; expiry of managed ids on a hand-made remap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys.data.featurize import featurize
from recsys.export.delta import Delta, write_delta
from recsys.export.manifest import ExportError, Manifest
from recsys.export.quantize import load_rows
from recsys.export.scorer import Scorer
from recsys.model.layout import REMAP_EMPTY_SLOT, RemapKeys, WeightLayout
from recsys.train.days import NEXT_DAY_AUC
from recsys.train.remap_state import expire_ids
from tests.days import Days, day_rows

TOL = 1e-5


@pytest.fixture
def days(trained_days: Days) -> Days:
    """The three days of tests/days.py, trained once per session (tests/conftest.py)."""
    return trained_days


# ------------------------------------------------------------------------ days, end to end


def test_each_day_trains_on_its_rows_and_is_scored_on_the_next_day(days: Days) -> None:
    """Progressive validation: day d's model (its export) gave the predictions of day d+1 that
    its run logged, and day d+1 started from day d's checkpoint, so it ran before."""
    result = days.result
    assert [d.train_path for d in result.days] == [str(f) for f in days.folders]
    assert [d.eval_path for d in result.days] == [str(f) for f in days.folders[1:]] + [None]
    for day, nxt in zip(result.days, result.days[1:], strict=False):
        assert nxt.warm_start == str(day.output_dir)  # day d+1 starts from day d
        predicted = pq.read_table(day.output_dir / "eval_predictions.parquet")["prob"]
        scored = Scorer(day.export_dir).score(day_rows(days.folders[day.index + 1]))
        np.testing.assert_allclose(scored, predicted.to_numpy(), rtol=0, atol=TOL)
        assert 0.5 < day.metrics[NEXT_DAY_AUC] < 1.0
    assert NEXT_DAY_AUC not in result.days[-1].metrics  # no next day


def test_one_parent_run_with_a_child_per_day_and_the_day_metrics(days: Days) -> None:
    client = MlflowClient(days.uri)
    parent = client.get_run(days.result.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    assert [c.info.run_id for c in children] == [d.run_id for d in days.result.days]
    assert [c.data.params["data.train_path"] for c in children] == [str(f) for f in days.folders]
    assert [c.data.tags["recsys.days.eval"] for c in children] == ["next_day"] * 2 + ["in_sample"]
    history = client.get_metric_history(parent.info.run_id, NEXT_DAY_AUC)
    assert [m.step for m in history] == [0, 1]
    drift = client.get_metric_history(parent.info.run_id, "drift/item_id")
    assert [m.step for m in drift] == [1, 2] and all(m.value > 0 for m in drift)
    child = children[1].data.metrics
    assert child["days/new_ids/user_id"] == days.result.days[1].metrics["new_ids/user_id"]
    assert {"days/norm_p50/user_id", "days/rows_touched/item_id"} <= set(child)


def test_new_id_share_counts_ids_never_seen_on_an_earlier_day(days: Days) -> None:
    seen: set[int] = set()
    for day, folder in zip(days.result.days, days.folders, strict=True):
        users = set(day_rows(folder)["user_id"].to_pylist())
        want = len(users - seen) / len(users)
        assert day.metrics["new_ids/user_id"] == pytest.approx(want, abs=1e-12)
        seen |= users
    assert days.result.days[0].metrics["new_ids/item_id"] == 1.0
    assert days.result.days[2].metrics["new_ids/item_id"] == 0.0  # the same 80 items every day


def test_warm_start_carries_the_weights_only_touched_rows_move(days: Days) -> None:
    """Day 2's item rows not read on day 2 are day 1's, bit for bit; the rest moved (drift)."""
    before, after = (days.result.days[i].export_dir for i in (1, 2))
    old = load_rows(before, Manifest.load(before).tables["item_id"]).full()
    new = load_rows(after, Manifest.load(after).tables["item_id"]).full()
    moved = np.linalg.norm(new - old, axis=1)
    touched = moved > 0
    assert 0 < touched.sum() < len(moved)
    assert days.result.days[2].metrics["drift/item_id"] == pytest.approx(moved[touched].mean())


def test_the_delta_chain_scores_as_the_full_export(days: Days) -> None:
    base = days.result.days[0].export_dir
    deltas = [d.delta_dir for d in days.result.days[1:]]
    full = Scorer(days.result.days[-1].export_dir)
    chained = Scorer(base, deltas=deltas)
    rows = pa.concat_tables([day_rows(f) for f in days.folders])
    np.testing.assert_allclose(chained.score(rows), full.score(rows), rtol=0, atol=TOL)
    delta = Delta.load(deltas[-1])
    assert (
        delta.raw["tables"]["item_id"]["count"]
        < Manifest.load(base).tables["item_id"]["num_buckets"]
    )
    assert "remap" in delta.raw["tables"]["user_id"]  # the managed table's remap travels along


def test_a_delta_out_of_order_or_of_another_base_is_refused(days: Days, tmp_path: Path) -> None:
    base = days.result.days[0].export_dir
    first, second = (d.delta_dir for d in days.result.days[1:])
    with pytest.raises(ExportError, match="applies to the export"):
        Scorer(base, deltas=[second])
    tampered = tmp_path / "tampered"
    shutil.copytree(first, tampered)
    raw = json.loads((tampered / "delta.json").read_text())
    raw["base"]["sha256"] = "0" * 64
    (tampered / "delta.json").write_text(json.dumps(raw))
    with pytest.raises(ExportError, match="applies to the export"):
        Scorer(base, deltas=[tampered, second])
    edited = tmp_path / "edited"
    shutil.copytree(first, edited)
    np.save(edited / "tables" / "item_id.npy", np.zeros((1, 1), np.float32))
    with pytest.raises(ExportError, match="checksum"):
        Scorer(base, deltas=[edited, second])


def test_a_delta_between_exports_of_other_tables_is_refused(days: Days, tmp_path: Path) -> None:
    export = days.result.days[0].export_dir
    other = tmp_path / "other"
    shutil.copytree(export, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["schema_fingerprint"] = "something else"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="different feature schemas"):
        write_delta(other, export, tmp_path / "delta")


def test_expired_managed_ids_lose_their_rows_and_the_remap_carries_over(days: Days) -> None:
    """expire_after_days=1: at day 2's start, ids seen on day 0 but not day 1 lose their rows
    (day 0's new users among them); the ones day 1 saw keep theirs from day to day."""
    schema = Manifest.load(days.result.days[0].export_dir).schema

    def hashed(folder: Path) -> set[int]:
        return set(featurize(day_rows(folder), schema).ids["user_id"].tolist())

    seen = [hashed(f) for f in days.folders]
    expired = set(np.load(days.result.days[2].output_dir / "expire.npz")["user_id"].tolist())
    assert expired == seen[0] - seen[1]
    assert not (days.result.days[1].output_dir / "expire.npz").exists() or not len(
        np.load(days.result.days[1].output_dir / "expire.npz")["user_id"]
    )
    remaps = [Scorer(d.export_dir).remaps["user_id"] for d in days.result.days]
    held = [set(r.ids.tolist()) for r in remaps]
    assert held[2].isdisjoint(expired - seen[2])
    # Day 1 saw only 96 - 1 rows' worth of ids over two days: what day 0 admitted and day 1
    # saw again kept its row (the remap was carried, not rebuilt).
    kept = held[0] & seen[1] & held[1]
    assert kept and all(remaps[0](np.array([i]))[0] == remaps[1](np.array([i]))[0] for i in kept)


# ------------------------------------------------------------------------- expiry, unit


def test_expire_ids_empties_slots_keeps_the_fallback_last_and_zeroes_rows() -> None:
    ids = torch.tensor([3, 5, 9, REMAP_EMPTY_SLOT])  # sorted; the last slot is the fallback
    rows = torch.tensor([2, 0, 1, 3])
    counts = torch.tensor([4, 7, 1, 0])
    weight, bias = torch.ones(4, 2), torch.ones(4, 4)
    prefix = "remap.t."
    state = {
        prefix + "_mch_sorted_raw_ids": ids,
        prefix + "_mch_remapped_ids_mapping": rows,
        prefix + "_mch_counts": counts,
        prefix + "_current_iter_tensor": torch.tensor([12]),
        "t.weight": weight,
        "t_bias.weight": bias,
    }
    keys = RemapKeys(prefix + "_mch_sorted_raw_ids", prefix + "_mch_remapped_ids_mapping")
    layout = WeightLayout({"t": "t.weight"}, {"t": "t_bias.weight"}, "head.", {"t": keys})
    assert expire_ids(state, layout, "t", np.array([5, 42])) == 1
    assert ids.tolist() == [3, 9, REMAP_EMPTY_SLOT, REMAP_EMPTY_SLOT]
    assert rows.tolist() == [2, 1, 0, 3]  # the freed row 0 waits in an empty slot
    assert counts.tolist() == [4, 1, 0, 0]
    assert weight[0].abs().sum() == 0 and bias[0].abs().sum() == 0
    assert weight[1:].eq(1).all() and bias[1:].eq(1).all()
    assert state[prefix + "_current_iter_tensor"].item() == 12
