"""The registered model serves: train a tiny model with the real recipe, register it, start the
real `mlflow models serve` on 127.0.0.1, POST raw records (unseen users included) and compare
with `recsys-score` on the same records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from recsys.cli.score import main as recsys_score
from recsys.compose import load_config
from recsys.schema import Schema, resolve_schema
from recsys.tracking import MlflowTracker
from recsys.tracking.model import CHAMPION_ALIAS, ModelVersionInfo, log_and_register
from recsys.train.recipe import TrainResult, run
from tests.processes import free_port, stop_group
from tests.synthetic import make_click_log, write_tiny_log

SERVER_START_TIMEOUT_S = 180  # the server imports torch and the scorer: slow on 2 busy cores
MODEL = "tiny"


def _train(tmp_path: Path, uri: str) -> tuple[TrainResult, Schema]:
    overrides = [
        *write_tiny_log(tmp_path).overrides,
        f"tracking.uri={uri}",
        f"tracking.register_as={MODEL}",
        "trainer.epochs=1",
    ]
    cfg = load_config(overrides, output_dir=str(tmp_path / "run"))
    return run(cfg), resolve_schema(cfg.data, cfg.model.embedding_dim)


def _registered(uri: str, result: TrainResult, schema: Schema) -> ModelVersionInfo | None:
    """Register the run's export, unless the recipe already did (it will, once wired)."""
    client = MlflowClient(tracking_uri=uri)
    if client.search_model_versions(f"name='{MODEL}'"):
        return None
    run_info = client.get_run(result.run_id).info
    tracker = MlflowTracker(
        client,
        result.run_id,
        experiment_id=run_info.experiment_id,
        experiment_name="recsys",
        tracking_uri=uri,
        required=True,
    )
    try:
        return log_and_register(tracker, result.export_dir, schema, result.metrics, MODEL)
    finally:
        tracker.finish()


def _records() -> pa.Table:
    """Raw records: known users, and users no training row had (ids offset by 10,000)."""
    seen = make_click_log(24, seed=7)
    unseen = make_click_log(8, seed=8, user_offset=10_000)
    return pa.concat_tables([seen, unseen])


def _as_request(records: pa.Table, schema: Schema) -> bytes:
    """The records as MLflow's `dataframe_split` JSON, typed as the model signature says:
    ids as strings, id lists "|"-joined, dense as numbers, missing as null."""
    columns = [c for c in schema.columns if c != schema.label.column]
    delimiters = {f.column: f.delimiter for f in schema.features if f.delimiter}
    dense = {f.column for f in schema.dense_features}

    def cell(column: str, value: object) -> object:
        if value is None or column in dense:
            return value
        if isinstance(value, list):
            return delimiters[column].join(str(v) for v in value)
        return str(value)

    rows = records.select(columns).to_pylist()
    data = [[cell(c, row[c]) for c in columns] for row in rows]
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()


@pytest.fixture
def server() -> Iterator[dict[str, subprocess.Popen]]:
    """A slot for the server the test starts; always stops its whole process group after."""
    slot: dict[str, subprocess.Popen] = {}
    yield slot
    proc = slot.get("proc")
    if proc is not None:
        stop_group(proc, grace_s=30)


def _serve(uri: str, port: int, log_path: Path) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "models", "serve", "-m", f"models:/{MODEL}@{CHAMPION_ALIAS}"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    # The server execs `uvicorn` by name: the venv's bin must be on PATH (as `make serve` puts it).
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{mlflow.parent}:{os.environ['PATH']}",
    }
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for_ping(proc: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)  # polling a starting server: there is no event to wait on
    pytest.fail(f"no /ping after {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def _invoke(port: int, body: bytes) -> np.ndarray:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as err:
        pytest.fail(f"/invocations answered {err.code}: {err.read().decode()[:4000]}")
    return np.array([p["score"] if isinstance(p, dict) else p for p in predictions], np.float64)


@pytest.mark.slow
def test_registered_champion_serves_the_scores_of_recsys_score(
    tmp_path: Path, server: dict[str, subprocess.Popen]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result, schema = _train(tmp_path, uri)
    assert result.run_id is not None and result.export_dir is not None
    version = _registered(uri, result, schema)
    client = MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    if version is not None:
        assert version.champion and str(champion.version) == version.version
    assert "eval/auc" in champion.tags  # the version carries its run's eval metrics

    records = _records()
    assert (records.column("user_id").to_numpy() > 10_000).sum() == 8  # unseen users present
    pq.write_table(records, tmp_path / "records.parquet")
    assert recsys_score([str(result.export_dir), str(tmp_path / "records.parquet"),
                         str(tmp_path / "scores.parquet")]) == 0  # fmt: skip
    expected = pq.read_table(tmp_path / "scores.parquet").column("score").to_numpy()

    port, log_path = free_port(), tmp_path / "serve.log"
    server["proc"] = proc = _serve(uri, port, log_path)
    _wait_for_ping(proc, port, log_path)
    served = _invoke(port, _as_request(records, schema))

    assert served.shape == expected.shape == (records.num_rows,)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    assert served.std() > 0  # not a constant answer that could match by accident
