"""recsys.tracking against a real SQLite MLflow store in a temporary folder (no mocks)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from recsys.config import DataConfig, FeatureKind, FeatureSpec, TrackingConfig, TrainConfig
from recsys.tracking import (
    MlflowTracker,
    NullTracker,
    TrackingError,
    default_artifact_root,
    default_tracking_uri,
    flatten_params,
    open_tracker,
    resolve_tracking_uri,
)
from recsys.tracking.mlflow_tracker import MAX_PARAMS_PER_BATCH
from recsys.tracking.params import MAX_PARAM_VALUE_LENGTH

UNREACHABLE_URI = "http://127.0.0.1:9"  # the discard port: nothing listens there
LOGGER = "recsys.tracking"  # parent of every tracking module's logger


def _train_config() -> TrainConfig:
    features = {
        "user_id": FeatureSpec(kind=FeatureKind("id"), seed=7),
        "age": FeatureSpec(kind=FeatureKind("dense")),
    }
    return TrainConfig(data=DataConfig(name="toy", train_path="/data/train", features=features))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module: creating its tables takes seconds, runs are cheap."""
    return tmp_path_factory.mktemp("mlflow_store")


@pytest.fixture()
def cfg(store: Path) -> TrackingConfig:
    return TrackingConfig(
        uri=f"sqlite:///{store / 'mlflow.db'}", experiment="tests", required=False
    )


@pytest.fixture()
def client(cfg: TrackingConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.uri)


# ------------------------------------------------------------------------------ flatten_params


def test_flatten_params_dotted_keys_enums_and_lists() -> None:
    params = flatten_params(_train_config())
    assert params["trainer.lr"] == "0.001"
    assert params["data.features.user_id.seed"] == "7"
    assert params["data.features.user_id.kind"] == "id"  # Enum by value
    assert params["data.features.age.transform"] == "none"
    assert params["model.over_arch"] == "[64, 32]"  # list of scalars as JSON
    assert params["data.tables"] == "{}"
    assert params["tracking.uri"] == "None"


def test_flatten_params_nested_lists_prefix_and_truncation() -> None:
    params = flatten_params({"a": [{"b": 1}, {"b": 2}], "long": "x" * 10_000}, prefix="cfg")
    assert params["cfg.a.0.b"] == "1" and params["cfg.a.1.b"] == "2"
    assert len(params["cfg.long"]) == MAX_PARAM_VALUE_LENGTH
    assert params["cfg.long"].endswith("...[truncated]")


def test_limits_match_mlflow() -> None:
    assert MAX_PARAM_VALUE_LENGTH == MAX_PARAM_VAL_LENGTH
    assert MAX_PARAMS_PER_BATCH == MAX_PARAMS_TAGS_PER_BATCH


# ----------------------------------------------------------------------------- logging a run


def test_params_are_flattened_and_readable(cfg: TrackingConfig, client: MlflowClient) -> None:
    cfg.run_name = "params"
    with open_tracker(cfg, _train_config()) as tracker:
        assert isinstance(tracker, MlflowTracker)
        tracker.log_params({f"extra.p{i}": i for i in range(250)})  # > one batch of 100
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "params"
    assert run.data.params["trainer.lr"] == "0.001"
    assert run.data.params["data.features.user_id.seed"] == "7"
    assert run.data.params["extra.p249"] == "249"


def test_metrics_by_step(cfg: TrackingConfig, client: MlflowClient) -> None:
    with open_tracker(cfg, None) as tracker:
        for step in range(5):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
    history = sorted(client.get_metric_history(tracker.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    assert history[-1].value == pytest.approx(0.2)


def test_artifacts_text_dict_and_figure(
    cfg: TrackingConfig, client: MlflowClient, store: Path, tmp_path: Path
) -> None:
    from matplotlib.figure import Figure

    (tmp_path / "one.txt").write_text("one")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text('{"v": 1}')
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    with open_tracker(cfg, None) as tracker:
        tracker.log_artifact(tmp_path / "one.txt")
        tracker.log_artifact(tmp_path / "one.txt", artifact_path="files")
        tracker.log_artifacts(tmp_path / "export", artifact_path="export")
        tracker.log_text("hello", "notes/summary.txt")
        tracker.log_dict({"kind": FeatureKind("id"), "n": 3}, "schema.json")
        tracker.log_figure(fig, "plots/curve.png")
    run_id = tracker.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"one.txt", "files", "export", "notes", "schema.json", "plots"} <= top
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/curve.png"]
    dst = Path(client.download_artifacts(run_id, "", str(tmp_path / "dl")))
    assert (dst / "notes" / "summary.txt").read_text() == "hello"
    assert json.loads((dst / "schema.json").read_text()) == {"kind": "id", "n": 3}
    assert json.loads((dst / "export" / "manifest.json").read_text()) == {"v": 1}
    assert (dst / "plots" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (store / "artifacts" / run_id / "artifacts" / "one.txt").is_file()  # beside the db


def test_tags_and_describe(cfg: TrackingConfig, client: MlflowClient) -> None:
    with open_tracker(cfg, None) as tracker:
        tracker.set_tags({"stage": "test"})
        hint = tracker.describe()
    assert client.get_run(tracker.run_id).data.tags["stage"] == "test"
    assert tracker.run_id in hint and "mlflow ui --backend-store-uri" in hint
    assert hint.endswith("?workflowType=machine_learning")  # opens the model-training view


def test_nested_run_has_parent_tag(cfg: TrackingConfig, client: MlflowClient) -> None:
    with open_tracker(cfg, None) as parent:
        child = open_tracker(cfg, None, parent_run_id=parent.run_id)
        child.finish()
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_status_finished_failed_killed(cfg: TrackingConfig, client: MlflowClient) -> None:
    with open_tracker(cfg, None) as ok:
        pass
    with pytest.raises(ValueError), open_tracker(cfg, None) as failed:
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), open_tracker(cfg, None) as killed:
        raise KeyboardInterrupt
    assert client.get_run(ok.run_id).info.status == "FINISHED"
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(killed.run_id).info.status == "KILLED"


def test_failed_call_mid_run(
    cfg: TrackingConfig, client: MlflowClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Calls MLflow refuses (here: the run was deleted) are warned about once and counted as
    lost; a required run raises at the end. (Calls are sent by a background thread, so the
    refusal is seen at `finish`, not in the call itself.)"""
    tracker = open_tracker(cfg, None)
    client.delete_run(tracker.run_id)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_metrics({"loss": 0.5}, step=1)  # refused too: no second refusal warning
        tracker.finish()
    assert len([r for r in caplog.records if "was refused" in r.getMessage()]) == 1
    assert tracker.delivery is not None and not tracker.delivery.complete
    strict = open_tracker(
        TrackingConfig(uri=cfg.uri, experiment=cfg.experiment, required=True), None
    )
    client.delete_run(strict.run_id)
    strict.log_metrics({"loss": 1.0})
    with pytest.raises(TrackingError, match="tracking.required"):
        strict.finish()


# ------------------------------------------------------------------------------ where runs go


def test_default_uri_and_artifact_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(Path(".")) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert default_artifact_root(Path(".")) == tmp_path.resolve() / "mlruns" / "artifacts"
    with open_tracker(TrackingConfig(experiment="default"), None) as tracker:
        tracker.log_text("x", "x.txt")
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    assert (tmp_path / "mlruns" / "artifacts" / tracker.run_id / "artifacts" / "x.txt").is_file()


def test_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(TrackingConfig(uri="http://cfg:5000")) == "http://cfg:5000"
    assert resolve_tracking_uri(TrackingConfig()) == "http://env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == default_tracking_uri(tmp_path)


# ------------------------------------------------------------------------------ tracking off


def test_unreachable_required_raises() -> None:
    with pytest.raises(TrackingError) as info:
        open_tracker(TrackingConfig(uri=UNREACHABLE_URI, required=True), _train_config())
    message = str(info.value)
    assert UNREACHABLE_URI in message and "tracking.required=false" in message


def test_unreachable_optional_warns_and_goes_untracked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        tracker = open_tracker(TrackingConfig(uri=UNREACHABLE_URI, required=False), _train_config())
    assert isinstance(tracker, NullTracker)
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING).getMessage()
    assert UNREACHABLE_URI in warning and "UNTRACKED" in warning
    assert "off" in tracker.describe()


def test_disabled_and_other_ranks_get_null_tracker(cfg: TrackingConfig) -> None:
    disabled = open_tracker(TrackingConfig(enabled=False), _train_config())
    other_rank = open_tracker(cfg, _train_config(), enabled_on_this_rank=False)
    for tracker in (disabled, other_rank):
        assert isinstance(tracker, NullTracker) and tracker.run_id is None
        with tracker:
            tracker.log_metrics({"loss": 1.0}, step=1)
            tracker.log_params({"a": 1})
        assert "tracking is off" in tracker.describe()


def test_null_tracker_never_imports_mlflow() -> None:
    code = (
        "import sys\n"
        "from recsys.config import TrackingConfig\n"
        "from recsys.tracking import open_tracker\n"
        "with open_tracker(TrackingConfig(enabled=False), {'a': 1}) as t:\n"
        "    t.log_metrics({'x': 1.0})\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
