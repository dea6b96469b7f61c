"""The collision study trains every (hashing, ratio) for real, sizes tables honestly, and logs
one MLflow run with its report and plot."""

from __future__ import annotations

import json
import math
import tempfile
from fractions import Fraction

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from recsys.bench.collisions import (
    MIN_ROWS,
    QUICK_RATIOS,
    REFERENCE,
    REMAP_BYTES_PER_ROW,
    CollisionData,
    plot,
    report,
    serving_bytes,
    shrink_overrides,
    study,
    table,
    track,
)
from recsys.bench.quality import Dataset, RunCache, run_metrics
from recsys.config import TrackingConfig
from tests.synthetic import write_tiny_log

TABLES = ("user_id", "item_id")


def _in_process(overrides: list[str], config_dir: str | None) -> dict[str, float]:
    """The study's runs without a process each (the same training; ~2 s instead of ~6 s)."""
    with tempfile.TemporaryDirectory() as out:
        return run_metrics({"overrides": overrides, "config_dir": config_dir, "output_dir": out})


@pytest.mark.slow  # ~14 s: a study of trainings; its pieces are tested fast below
def test_quick_study_trains_each_point_and_logs_one_mlflow_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    log = write_tiny_log(tmp_path, history=False)  # eval: 200 rows of new users
    spec = CollisionData(Dataset("tiny", ["data=movielens", *log.overrides]), TABLES)
    cache = RunCache(tmp_path / "cache.json", train=_in_process)
    points = study({"tiny": spec}, ["plain", "managed"], list(QUICK_RATIOS), [0], cache)

    assert [(p.hashing, p.ratio) for p in points] == [
        (REFERENCE, ""),
        ("plain", "1"),
        ("plain", "1/100"),
        ("managed", "1"),
        ("managed", "1/100"),
    ]
    assert all(len(p.runs) == 1 and not p.errors for p in points)
    assert len(json.loads(cache.path.read_text())) == 5  # five real runs, cached
    by = {(p.hashing, p.ratio): p for p in points}
    both = pa.concat_tables([pq.read_table(f, columns=list(TABLES)) for f in (log.train, log.eval)])
    distinct = {t: len(set(both[t].to_pylist())) for t in TABLES}  # 117 users, 80 items
    assert by["plain", "1"].rows == distinct
    assert by["plain", "1/100"].rows == {"user_id": MIN_ROWS, "item_id": MIN_ROWS}
    for hashing in ("plain", "managed"):
        assert by[hashing, "1"].bytes > by[hashing, "1/100"].bytes
    assert (
        by["managed", "1"].bytes
        == by["plain", "1"].bytes + sum(distinct.values()) * REMAP_BYTES_PER_ROW
    )
    assert all(0.5 < p.stat()[0] < 1 and math.isfinite(p.stat()[0]) for p in points)
    # 6 rows for 120 users and 80 items lose most of the id signal (measured on seeds 0-4:
    # the gap is 0.017-0.09; seed 0 gives 0.663 vs 0.573)
    assert by["plain", "1"].stat()[0] > by["plain", "1/100"].stat()[0] + 0.01
    assert by["plain", "1"].share() is None  # no planted p_true on this log

    data = report(points, [0])
    files = [tmp_path / "c.json", tmp_path / "c.png"]
    files[0].write_text(json.dumps(data))
    plot(points, files[1])
    assert files[1].stat().st_size > 10_000
    assert "| tiny | plain | 1/100 |" in table(points)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = track(data, files, {"seeds": "0"}, TrackingConfig(uri=uri, experiment="t"))
    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(run_id, "tiny/plain/eval_auc")
    assert {m.step: m.value for m in history} == pytest.approx(
        {1: by["plain", "1"].stat()[0], 100: by["plain", "1/100"].stat()[0]}
    )
    (reference,) = client.get_metric_history(run_id, "tiny/reference/bytes")
    assert reference.step == 0 and reference.value == by[REFERENCE, ""].bytes
    assert {a.path for a in client.list_artifacts(run_id)} == {"c.json", "c.png"}
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("rows", [6, 7, 9, 94, 1682])
def test_every_hashing_gets_the_same_embedding_rows(rows: int) -> None:
    got = {}
    for hashing in ("plain", "double", "qr", "managed"):
        overrides = ["data=movielens", *shrink_overrides(hashing, {"user_id": rows})]
        got[hashing] = serving_bytes(overrides, ("user_id",))
    assert set(got["qr"][0]) == {"user_id__q", "user_id__r"}
    assert {h: sum(r.values()) for h, (r, _) in got.items()} == dict.fromkeys(got, rows)
    per_row = (16 + 1) * 4  # embedding_dim 16 and one bias column, float32
    assert got["plain"][1] == got["double"][1] == got["qr"][1] == rows * per_row
    assert got["managed"][1] == rows * (per_row + REMAP_BYTES_PER_ROW)


def test_a_run_that_fails_is_reported_in_its_point_not_raised(tmp_path) -> None:
    log = write_tiny_log(tmp_path)
    spec = CollisionData(Dataset("tiny", ["data=movielens", *log.overrides]), TABLES)

    def managed_fails(overrides: list[str], config_dir: str | None) -> dict[str, float]:
        if any("hashing:managed" in o for o in overrides):
            raise RuntimeError("run failed:\nTraceback ...\nValueError: no rows left")
        return {"eval/auc": 0.6}

    cache = RunCache(None, train=managed_fails)
    points = study({"tiny": spec}, ["plain", "managed"], [Fraction(1, 10)], [0, 1], cache)
    failed = {p.hashing: p.errors for p in points}
    assert failed == {
        REFERENCE: [],
        "plain": [],
        "managed": ["seed 0: ValueError: no rows left", "seed 1: ValueError: no rows left"],
    }
    assert math.isnan(points[-1].stat()[0])
    assert "| nan" not in table(points) and "(failed 2: seed 0: ValueError" in table(points)
    assert report(points, [0, 1])["points"][-1]["errors"] == failed["managed"]
