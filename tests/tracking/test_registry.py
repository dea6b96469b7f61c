"""The registry side of recsys.tracking.model on a real SQLite store (no server, no mocks):
who becomes `champion`, what each version carries, and the signature built from the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.types.schema import Array, DataType

from recsys.compose import load_config
from recsys.schema import resolve_schema
from recsys.tracking import NullTracker
from recsys.tracking.model import (
    CHAMPION_ALIAS,
    TAG_VALIDATION_AUC,
    TAG_VALIDATION_METRIC,
    UNSEEN_ID,
    input_example,
    log_and_register,
    model_signature,
    register_version,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    """One SQLite store for the module: creating its tables takes seconds."""
    store = tmp_path_factory.mktemp("registry")
    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def _new_model(client: MlflowClient) -> tuple[str, str]:
    """A run and a logged model of it (no artifacts: the registry rule does not read them)."""
    experiment = client.get_experiment_by_name("registry") or client.create_experiment("registry")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    run = client.create_run(experiment_id)
    model = client.create_logged_model(experiment_id, source_run_id=run.info.run_id)
    return run.info.run_id, model.model_id


def _register(client: MlflowClient, name: str, metrics: dict[str, float]):
    run_id, model_id = _new_model(client)
    return register_version(client, name, model_id, run_id, metrics)


def _champion_version(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version)


def test_champion_moves_only_to_a_better_validation_auc(client: MlflowClient) -> None:
    first = _register(client, "ctr", {"valid/auc": 0.70, "eval/auc": 0.69, "eval/log_loss": 0.6})
    assert first.champion and first.validation_metric == "valid/auc"
    assert _champion_version(client, "ctr") == first.version

    worse = _register(client, "ctr", {"valid/auc": 0.68, "eval/auc": 0.80})
    assert not worse.champion  # a better eval AUC does not count: validation decides
    assert _champion_version(client, "ctr") == first.version

    tie = _register(client, "ctr", {"valid/auc": 0.70})
    assert not tie.champion  # it must beat the champion, not match it
    assert _champion_version(client, "ctr") == first.version

    better = _register(client, "ctr", {"valid/auc": 0.7001, "eval/auc": 0.5})
    assert better.champion
    assert _champion_version(client, "ctr") == better.version
    assert int(better.version) == int(first.version) + 3


def test_each_version_carries_its_metrics_and_the_deciding_one(client: MlflowClient) -> None:
    metrics = {"eval/auc": 0.71, "eval/log_loss": 0.61, "eval/ne": 0.93, "train/loss": 0.5}
    info = _register(client, "eval-only", metrics)
    tags = client.get_model_version("eval-only", info.version).tags
    assert float(tags["eval/auc"]) == pytest.approx(0.71, abs=1e-12)
    assert float(tags["eval/log_loss"]) == pytest.approx(0.61, abs=1e-12)
    assert "train/loss" not in tags  # eval and validation metrics only
    # Without a validation split, eval/auc decides, and the version says so.
    assert tags[TAG_VALIDATION_METRIC] == "eval/auc"
    assert float(tags[TAG_VALIDATION_AUC]) == pytest.approx(0.71, abs=1e-12)
    assert info.champion and info.model_uri == f"models:/eval-only/{info.version}"


def test_the_logged_model_names_its_versions(client: MlflowClient) -> None:
    """The UI's Models column reads the versions from the logged model's tag."""
    run_id, model_id = _new_model(client)
    first = register_version(client, "linked", model_id, run_id, {"valid/auc": 0.6})
    second = register_version(client, "linked-too", model_id, run_id, {"valid/auc": 0.6})
    listed = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert listed == [
        {"name": "linked", "version": first.version},
        {"name": "linked-too", "version": second.version},
    ]


def test_a_version_without_auc_never_displaces_a_champion(client: MlflowClient) -> None:
    first = _register(client, "no-auc", {"eval/log_loss": 0.6})
    assert first.champion  # there was none
    second = _register(client, "no-auc", {"eval/auc": 0.6})
    assert second.champion  # a champion without a recorded AUC loses to one with it
    third = _register(client, "no-auc", {"eval/log_loss": 0.5})
    assert not third.champion
    assert client.get_model_version("no-auc", third.version).tags[TAG_VALIDATION_METRIC] == "none"
    assert _champion_version(client, "no-auc") == second.version


def test_signature_and_example_follow_the_schema() -> None:
    schema = resolve_schema(load_config([]).data, 8)  # MovieLens: ids, an id list, a dense
    inputs = {c.name: c.type for c in model_signature(schema).inputs.inputs}
    assert list(inputs) == [c for c in schema.columns if c != schema.label.column]
    assert inputs["user_id"] == DataType.string
    assert inputs["genres"] == DataType.string  # "|"-joined, the data config's delimiter
    assert inputs["age"] == DataType.double
    assert [c.name for c in model_signature(schema).outputs.inputs] == ["score"]

    example = input_example(schema)
    assert list(example.columns) == list(inputs)
    assert UNSEEN_ID in set(example["user_id"])
    assert example["genres"][0] == "1|2"


def test_an_id_list_without_delimiter_is_an_array_of_strings() -> None:
    cfg = load_config(["data.features.genres.delimiter=null"])
    inputs = {c.name: c.type for c in model_signature(resolve_schema(cfg.data, 8)).inputs.inputs}
    assert inputs["genres"] == Array(DataType.string)


def test_without_a_run_nothing_is_logged(tmp_path: Path) -> None:
    assert log_and_register(NullTracker(), tmp_path, None, {}, "ctr") is None  # type: ignore[arg-type]
