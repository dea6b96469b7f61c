"""The notebooks in notebooks/, executed on tiny data so they never rot.

Each notebook takes its inputs from environment variables (defaults: what `make data` and
`make train` leave in the project) and, when `RECSYS_RESULTS` names a file, writes what it
found there as JSON; the tests check those findings against values computed here, on their own.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from recsys.compose import load_config
from recsys.config import ConfigError
from recsys.export.manifest import Manifest
from recsys.export.quantize import load_rows
from recsys.export.scorer import Scorer
from recsys.hashing import MISSING_BUCKET, hash_id
from recsys.train.api import new_output_dir, train
from recsys.train.recipe import TrainResult, run
from tests.synthetic import TinyLog, write_tiny_log

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def execute(
    name: str, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Run notebooks/<name>.ipynb in a fresh kernel with `env`; its findings (RECSYS_RESULTS)."""
    import nbformat
    from nbclient import NotebookClient

    results = tmp_path / f"{name}.json"
    for key, value in {**env, "RECSYS_RESULTS": str(results), "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return json.loads(results.read_text())


# ----------------------------------------------------------------------------- quickstart


def test_train_api_names_a_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.lrr"):
        train(["trainer.lrr=0.1"], output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_train_api_never_reuses_a_run_folder(tmp_path: Path) -> None:
    now = datetime(2026, 12, 1, 7, 54, 4)
    first = new_output_dir(tmp_path, now)
    assert first == tmp_path / "2026-12-01" / "07-54-04"  # Hydra's run folder name
    first.mkdir(parents=True)
    assert new_output_dir(tmp_path, now) == tmp_path / "2026-12-01" / "07-54-04-1"


def test_quickstart_trains_reads_mlflow_and_scores(
    tiny_log: TinyLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    args = [*tiny_log.overrides, "trainer.epochs=1", "tracking.experiment=quickstart"]
    env = {"RECSYS_PROJECT_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": uri}
    found = execute(
        "quickstart", env | {"RECSYS_TRAIN_ARGS": shlex.join(args)}, tmp_path, monkeypatch
    )

    mlrun = MlflowClient(uri).get_run(found["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert found["metrics"]["eval/auc"] == mlrun.data.metrics["eval/auc"]
    assert found["metrics"]["valid/auc"] == mlrun.data.metrics["valid/auc"]
    assert found["curve_points"]["train/loss"] >= 3 and found["curve_points"]["valid/auc"] >= 1
    assert {"plots/roc.png", "plots/learning_curves.png"} <= set(found["plots"])
    # train() put the run under the project's outputs/<date>/<time>/, as make train does.
    export_dir = Path(found["export_dir"])
    assert export_dir.parent.parent.parent == tmp_path / "outputs"
    rows = pq.read_table(tiny_log.eval).slice(0, 5)
    expected = Scorer(export_dir).score(rows)
    np.testing.assert_allclose(found["scores"], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(found["scores"], found["logged_scores"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------- comparing_runs


def _log_sweep(client: MlflowClient, experiment_id: str, start: int, trials: dict) -> str:
    """What `make sweep` leaves in MLflow: a parent run tagged with its sweep folder, and a
    child run per trial (params, valid/* and eval/* metrics). Returns the parent's id."""
    parent = client.create_run(
        experiment_id, start_time=start, run_name="sweep-dlrm-movielens-x",
        tags={"recsys.sweep_dir": "/sweeps/x"},
    )  # fmt: skip
    parent_id = parent.info.run_id
    for number, (dim, metrics) in enumerate(trials.items()):
        child = client.create_run(
            experiment_id, start_time=start + 1 + number, run_name=f"dlrm-movielens-t{number}",
            tags={"mlflow.parentRunId": parent_id, "sweep.trial": str(number)},
        )  # fmt: skip
        run_id = child.info.run_id
        for key, value in {"model.embedding_dim": dim, "output_dir": f"/sweeps/x/{number}"}.items():
            client.log_param(run_id, key, value)
        client.log_param(run_id, "trainer.lr", "0.001")  # the same in every trial: not swept
        for key, value in metrics.items():
            client.log_metric(run_id, key, value, step=10)
        client.set_terminated(run_id, "FINISHED" if "valid/auc" in metrics else "FAILED")
    client.set_terminated(parent_id)
    return parent_id


def _best_by_validation(client: MlflowClient, experiment_id: str, parent_id: str) -> str:
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    scored = [c for c in children if "valid/auc" in c.data.metrics]
    return max(scored, key=lambda c: c.data.metrics["valid/auc"]).info.run_id


def test_comparing_runs_picks_the_best_trial_by_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("sweeps")
    auc = {"valid/log_loss": 0.6, "eval/log_loss": 0.6}
    # An older sweep, then the newest one: the notebook reads the newest by default.
    _log_sweep(client, experiment_id, 1_000, {"8": {"valid/auc": 0.9, "eval/auc": 0.9, **auc}})
    parent_id = _log_sweep(
        client,
        experiment_id,
        2_000,
        {
            "32": {"valid/auc": 0.71, "eval/auc": 0.69, **auc},
            "8": {"valid/auc": 0.70, "eval/auc": 0.66, **auc},
            "16": {"valid/auc": 0.72, "eval/auc": 0.65, **auc},  # best by valid, not by eval
            "64": {"train/loss": 0.7},  # failed before validating: never the best
        },
    )
    env = {"MLFLOW_TRACKING_URI": uri, "RECSYS_EXPERIMENT": "sweeps"}
    found = execute("comparing_runs", env, tmp_path, monkeypatch)

    assert found["sweep_run_id"] == parent_id
    assert found["param"] == "model.embedding_dim" and found["swept"] == ["model.embedding_dim"]
    assert len(found["trials"]) == 4
    assert found["best_run_id"] == _best_by_validation(client, experiment_id, parent_id)
    assert found["best_value"] == "16" and found["best_objective"] == pytest.approx(0.72)


@pytest.mark.slow
def test_comparing_runs_on_a_real_sweep(
    tiny_log: TinyLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make sweep` on tiny data (recsys-train --multirun), then the notebook on its runs."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    args = ["--multirun", "model.embedding_dim=4,8,16", "trainer.epochs=1"]
    args += ["export.enabled=false", f"tracking.uri={uri}", "tracking.experiment=sweep"]
    args += [f"hydra.sweep.dir={tmp_path / 'multirun'}", *tiny_log.overrides]
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {"MLFLOW_TRACKING_URI": uri, "RECSYS_EXPERIMENT": "sweep"}
    found = execute("comparing_runs", env, tmp_path, monkeypatch)

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("sweep").experiment_id
    assert found["param"] == "model.embedding_dim" and len(found["trials"]) == 3
    assert found["best_run_id"] == _best_by_validation(client, experiment_id, found["sweep_run_id"])
    assert found["best_run_id"] == found["parent_best_run_id"]  # the sweep's own pick agrees


# ----------------------------------------------------------------------------- embeddings


@pytest.fixture(scope="module", params=["plain", "double"])
def tiny_export(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyLog, Path, Path]:
    """A tiny MovieLens-shaped run's export (item table hashed `plain` or `double`), and an
    items file with titles, as `recsys-data movielens` leaves in data/movielens/raw/."""
    root = tmp_path_factory.mktemp(f"embeddings-{request.param}")
    log = write_tiny_log(root)
    overrides = [*log.overrides, "tracking=none", f"data.tables.item_id.hashing={request.param}"]
    result: TrainResult = run(load_config(overrides, output_dir=str(root / "out")))
    items = root / "items.parquet"
    item_ids = list(range(1, 81))
    pq.write_table(
        pa.table({"movie_id": item_ids, "movie_title": [f"Movie {i} (1995)" for i in item_ids]}),
        items,
    )
    return log, result.export_dir, items


def _distinct_ids(column: pa.ChunkedArray) -> list:
    if pa.types.is_list(column.type):
        column = pc.list_flatten(column)
    return [v for v in pc.unique(column).to_pylist() if v not in (None, "")]


def test_embeddings_neighbours_projection_norms_and_buckets(
    tiny_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, export_dir, items = tiny_export
    env = {
        "RECSYS_PROJECT_DIR": str(tmp_path),
        "RECSYS_EXPORT_DIR": str(export_dir),
        "RECSYS_DATA": str(log.train),
        "RECSYS_ITEMS": str(items),
        "RECSYS_MIN_ROWS": "20",
    }
    found = execute("embeddings", env, tmp_path, monkeypatch)

    # Item vectors recomputed here: the reference hash (mmh3, one id at a time) of every
    # lookup the manifest lists, rows summed (double hashing's combine).
    manifest = Manifest.load(export_dir)
    train = pq.read_table(log.train)
    counts = {v["values"]: v["counts"] for v in pc.value_counts(train["item_id"]).to_pylist()}
    by_popularity = sorted(counts, key=lambda i: (-counts[i], i))
    candidates = [i for i in by_popularity if counts[i] >= 20]
    lookups = manifest.schema.lookups_of("item_id")
    assert [lk.combine.value for lk in lookups] == ["sum"] * len(lookups)
    tables = {t: load_rows(export_dir, manifest.tables[t]).full() for t in manifest.tables}
    vectors = sum(
        tables[lk.table][[hash_id(i, lk.seed, lk.hash_buckets) for i in candidates]]
        for lk in lookups
    )
    unit = vectors / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    assert list(found["neighbours"]) == [str(i) for i in candidates[:6]]  # the most-rated
    for query, neighbours in found["neighbours"].items():
        row = cosine[candidates.index(int(query))]
        assert int(query) not in neighbours and len(set(neighbours)) == 5
        # The 5 highest cosines, in order (float32 in the notebook: near-ties may swap).
        got = row[[candidates.index(i) for i in neighbours]]
        np.testing.assert_allclose(got, np.sort(row)[::-1][:5], rtol=0, atol=1e-6)
    assert found["items"] == len(counts) and found["candidates"] == len(candidates)

    assert 0 < found["pca_explained"][1] <= found["pca_explained"][0] <= 1
    assert sum(found["pca_explained"]) <= 1 + 1e-9
    assert -1 <= found["norm_popularity_spearman"] <= 1
    assert 0 <= found["genre_jaccard"]["random_pairs"] <= 1

    # Ids per row, recomputed here for every physical table: each distinct raw id of every
    # feature reading the table, hashed by each of its lookups into the table.
    assert set(found["ids_per_row"]) == set(manifest.tables)
    for name, entry in found["ids_per_row"].items():
        rows = [
            hash_id(value, lk.seed, lk.hash_buckets)
            for lk in manifest.schema.lookups
            if lk.table == name
            for value in _distinct_ids(train[_column(manifest, lk.feature)])
        ]
        assert MISSING_BUCKET not in rows
        per_row = np.bincount(rows, minlength=manifest.tables[name]["num_buckets"])
        histogram = np.bincount(per_row)[1:]
        assert entry["ids"] == len(rows)
        assert entry["rows_used"] == int((per_row > 0).sum())
        assert entry["histogram"] == {str(k + 1): int(n) for k, n in enumerate(histogram) if n}
        assert sum(int(k) * n for k, n in entry["histogram"].items()) == entry["ids"]
    if len(lookups) == 2:  # double hashing into one table: each item fills two of its rows
        assert found["ids_per_row"]["item_id"]["ids"] == 2 * len(counts)


def _column(manifest: Manifest, feature: str) -> str:
    return next(f.column for f in manifest.schema.features if f.name == feature)
