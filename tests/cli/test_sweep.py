"""`make sweep`: a Hydra multirun is one MLflow parent run with a child run per trial."""

from __future__ import annotations

import os
import re
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
        "trainer.first_order_stage=true",  # the default, off in the tiny log's overrides
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
    # each trial warm-started from its own first-order stage: a tag, not a swept parameter
    assert all(c.data.params["trainer.warm_start"] == "None" for c in children)
    assert all("first_order_stage" in c.data.tags["warm_started_from"] for c in children)
    assert parents[0].info.status == "FINISHED"
    assert all("eval/auc" in c.data.metrics for c in children)

    # Unique, telling names: the trial number is in each child's name.
    names = sorted(c.info.run_name for c in children)
    assert re.fullmatch(r"dlrm-movielens-t0-\d{4}-\d{4}-[0-9a-f]{4}", names[0]), names
    assert re.fullmatch(r"dlrm-movielens-t1-\d{4}-\d{4}-[0-9a-f]{4}", names[1]), names
    assert parents[0].info.run_name.startswith("sweep-dlrm-movielens-")

    # The parent carries the best trial: its params, its metrics, which objective, a plot.
    parent = parents[0]
    tags = parent.data.tags
    objective = tags["sweep.objective"]
    assert objective == "valid/auc"  # never eval: eval reports on the chosen config
    # the best validation (trials that never beat their common first-order start tie there)
    (best,) = [c for c in children if c.info.run_id == tags["sweep.best_run_id"]]
    assert best.data.metrics[objective] == max(c.data.metrics[objective] for c in children)
    assert best.info.run_id in tags["sweep.best_run_url"]
    assert tags["sweep.best_run_id"] == best.info.run_id and tags["sweep.trials"] == "2"
    assert parent.data.params["model.embedding_dim"] == best.data.params["model.embedding_dim"]
    assert parent.data.metrics[objective] == best.data.metrics[objective]
    assert best.info.run_name in tags["mlflow.note.content"]
    plots = [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    assert plots == ["plots/sweep_objective.png"]
    png = Path(client.download_artifacts(parent.info.run_id, plots[0], str(tmp_path / "dl")))
    assert png.read_bytes()[:4] == b"\x89PNG"

    # The best trial's overrides, as a config `make train` reuses (printed with the command).
    best_yaml = tmp_path / "multirun" / "experiment" / "best.yaml"
    assert "best.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    dim = int(best.data.params["model.embedding_dim"])
    assert f"embedding_dim: {dim}" in best_yaml.read_text()
    assert f"--config-dir {tmp_path / 'multirun'} +experiment=best" in proc.stdout
