"""What makes a run findable and trustworthy later: its name, links, tags, datasets, system
metrics and description, checked against a real SQLite MLflow store (no mocks)."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from recsys.config import DataConfig, ModelConfig, ModelName, TrackingConfig, TrainConfig
from recsys.tracking import (
    MlflowTracker,
    NullTracker,
    experiment_url,
    log_data_fingerprint,
    open_tracker,
    run_name,
    run_tags,
    run_url,
)
from recsys.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from recsys.tracking.urls import RUNS_VIEW_TAG, local_ui_url

NAME = re.compile(r"^dcn-movielens-\d{4}-\d{4}-[0-9a-f]{4}$")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow_store")


@pytest.fixture()
def cfg(store: Path) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{store / 'mlflow.db'}", experiment="identity")


@pytest.fixture()
def client(cfg: TrackingConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.uri)


def _run_config() -> TrainConfig:
    return TrainConfig(
        data=DataConfig(name="movielens", train_path="/data/train"),
        model=ModelConfig(name=ModelName.dcn),
    )


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------- names


def test_same_seed_runs_get_unique_telling_names(cfg: TrackingConfig, client: MlflowClient) -> None:
    names = []
    for _ in range(2):
        _seed(42)  # the trainer seeds every RNG before it opens the tracker
        with open_tracker(cfg, _run_config()) as tracker:
            pass
        names.append(client.get_run(tracker.run_id).info.run_name)
    assert all(NAME.match(n) for n in names), names
    assert names[0] != names[1]


def test_run_name_parts() -> None:
    stamp = datetime(2026, 12, 1, 1, 53)
    name = run_name("dlrm", "criteo day/0", trial=3, now=stamp)
    assert re.fullmatch(r"dlrm-criteo_day_0-t3-1201-0153-[0-9a-f]{4}", name), name
    assert len({run_name("dlrm", "x", now=stamp) for _ in range(50)}) > 40  # random suffix


def test_configured_run_name_is_kept(cfg: TrackingConfig, client: MlflowClient) -> None:
    cfg.run_name = "my-baseline"
    with open_tracker(cfg, _run_config()) as tracker:
        pass
    assert client.get_run(tracker.run_id).info.run_name == "my-baseline"


def test_sweep_child_name_has_trial(
    cfg: TrackingConfig, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_SWEEP_TRIAL", "7")
    with open_tracker(cfg, None) as parent:
        child = open_tracker(cfg, _run_config(), parent_run_id=parent.run_id)
        child.finish()
    run = client.get_run(child.run_id)
    assert re.fullmatch(r"dcn-movielens-t7-\d{4}-\d{4}-[0-9a-f]{4}", run.info.run_name)
    assert run.data.tags["sweep.trial"] == "7"
    assert "-t7-" not in client.get_run(parent.run_id).info.run_name  # not a child


# ---------------------------------------------------------------------------------- UI links


def test_links_open_the_model_training_view(cfg: TrackingConfig, client: MlflowClient) -> None:
    with open_tracker(cfg, None) as tracker:
        assert isinstance(tracker, MlflowTracker)
        hint, url = tracker.describe(), tracker.url()
    exp = tracker.experiment_id
    assert url == f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{tracker.run_id}" + (
        "?workflowType=machine_learning"
    )
    assert url in hint and "mlflow ui --backend-store-uri" in hint
    assert experiment_url("http://h:1/", "3") == (
        "http://h:1/#/experiments/3/runs?viewStateShareKey=recsys&workflowType=machine_learning"
    )
    assert run_url("https://mlflow.example", "3", "abc").startswith("https://mlflow.example/#/")
    tags = client.get_experiment(exp).tags
    assert tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND
    # The view the link names: metric columns in the runs table (the browser test shows them).
    view = json.loads(tags[RUNS_VIEW_TAG])
    assert "metrics.`eval/auc`" in view["selectedColumns"]


def test_existing_experiment_gets_the_kind_tag(cfg: TrackingConfig, client: MlflowClient) -> None:
    exp = client.create_experiment("made-elsewhere")
    cfg.experiment = "made-elsewhere"
    with open_tracker(cfg, None):
        pass
    assert client.get_experiment(exp).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert RUNS_VIEW_TAG in client.get_experiment(exp).tags


def test_make_ui_link_names_the_experiment(cfg: TrackingConfig, store: Path) -> None:
    with open_tracker(cfg, None) as tracker:
        pass
    url = local_ui_url(store / "mlflow.db", "identity", 5123)
    assert url == experiment_url("http://127.0.0.1:5123", tracker.experiment_id)
    fallback = local_ui_url(store / "absent.db", "identity", 5123)
    assert fallback == "http://127.0.0.1:5123/#/experiments?workflowType=machine_learning"


# ------------------------------------------------------------------------- tags and datasets


def test_run_tags_and_description(cfg: TrackingConfig, client: MlflowClient) -> None:
    with open_tracker(cfg, None) as tracker:
        tracker.set_tags(run_tags(world_size=2, device="cpu"))
        tracker.set_description("eval/auc 0.71 after 300 steps")
    tags = client.get_run(tracker.run_id).data.tags
    assert tags["world_size"] == "2" and tags["device"] == "cpu" and tags["host"]
    assert torch.__version__.startswith(tags["version.torch"])  # "2.13.0" of "2.13.0+cpu"
    assert {"version.torchrec", "version.fbgemm_gpu", "version.mlflow", "version.recsys"} <= set(
        tags
    )
    assert tags["mlflow.note.content"] == "eval/auc 0.71 after 300 steps"
    if shutil.which("git") and _in_git_repo(Path.cwd()):
        assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"])
        assert tags["git.dirty"] in ("true", "false")


def test_no_git_repo_means_no_git_tags(tmp_path: Path) -> None:
    tags = run_tags(world_size=1, device="cpu", cwd=tmp_path)
    assert "mlflow.source.git.commit" not in tags and "git.dirty" not in tags
    assert tags["world_size"] == "1"


def test_git_commit_and_dirty_flag(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    clean = run_tags(1, "cpu", cwd=tmp_path)
    assert clean["mlflow.source.git.commit"] == head.strip() and clean["git.dirty"] == "false"
    (tmp_path / "a.txt").write_text("changed")
    assert run_tags(1, "cpu", cwd=tmp_path)["git.dirty"] == "true"


def test_dataset_inputs_readable_back(cfg: TrackingConfig, client: MlflowClient) -> None:
    fingerprint = {
        "path": "/data/clicks/train",
        "format": "parquet",
        "files": [{"name": "/data/clicks/train/p0.parquet", "size": 10}],
        "total_bytes": 10,
        "rows": 350,
        "digest": "0123456789abcdef",
        "schema": {"label": "double", "user": "string"},
    }
    with open_tracker(cfg, None) as tracker:
        log_data_fingerprint(tracker, "train", "movielens", fingerprint)
        tracker.log_dataset(
            "eval", "movielens", "s3://bucket/eval", "fedcba", {"label": "double"}, None
        )
    run = client.get_run(tracker.run_id)
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs if i.tags}
    assert set(inputs) == {"train", "eval"}
    train = inputs["train"]
    assert (train.name, train.digest, train.source_type) == (
        "movielens",
        "0123456789abcdef",
        "local",
    )
    assert '"/data/clicks/train"' in train.source and '"num_rows": 350' in train.profile
    assert '"name": "user"' in train.schema
    assert inputs["eval"].source_type == "s3"
    tags = run.data.tags
    assert tags["data.train.rows"] == "350" and tags["data.train.digest"] == "0123456789abcdef"
    assert client.list_artifacts(tracker.run_id, "data")[0].path == "data/train_fingerprint.json"


def test_bad_dataset_context_is_refused(cfg: TrackingConfig) -> None:
    with open_tracker(cfg, None) as tracker, pytest.raises(ValueError, match="validation"):
        tracker.log_dataset("training", "x", "/x", "d", {}, None)


def test_null_tracker_takes_the_new_calls() -> None:
    tracker = NullTracker()
    tracker.set_description("x")
    tracker.log_dataset("train", "x", "/x", "d", {}, None)


# ----------------------------------------------------------------------------- system metrics


def test_system_metrics_logged_until_finish(
    cfg: TrackingConfig, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    tracker = open_tracker(cfg, None)
    assert isinstance(tracker, MlflowTracker)
    monitor = tracker._system_metrics
    assert monitor is not None
    deadline = time.monotonic() + 20
    while monitor._logging_step == 0 and time.monotonic() < deadline:  # one sample logged
        time.sleep(0.05)
    tracker.finish()
    assert tracker._system_metrics is None and not monitor._process
    metrics = client.get_run(tracker.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert metrics["system/system_memory_usage_megabytes"] > 0


def _in_git_repo(path: Path) -> bool:
    proc = subprocess.run(["git", "-C", str(path), "rev-parse"], capture_output=True)
    return proc.returncode == 0
