"""`make sweep`: a Hydra multirun is one MLflow parent run with a child run per trial."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient


def test_multirun_nests_trials_under_one_parent_run(tiny_log, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    args = [
        "--multirun",
        "model.embedding_dim=4,8",
        "trainer.max_steps=3",
        "export.enabled=false",
        f"tracking.uri={uri}",
        "tracking.experiment=sweep",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        *tiny_log.overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.params["model.embedding_dim"] for c in children) == ["4", "8"]
    assert parents[0].info.status == "FINISHED"
    assert all("eval/auc" in c.data.metrics for c in children)
