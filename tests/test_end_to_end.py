"""One real path through everything: train -> MLflow run -> export -> score parity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from recsys.compose import load_config
from recsys.export.manifest import ExportError, Manifest
from recsys.export.scorer import Scorer
from recsys.train.recipe import TrainResult, run
from tests.synthetic import write_tiny_log

BLOCK_TORCHREC = "import sys; sys.modules['torchrec'] = None; sys.modules['fbgemm_gpu'] = None; "


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    log = write_tiny_log(root)
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    cfg = load_config(
        log.overrides + [f"tracking.uri={uri}", "tracking.experiment=e2e", "trainer.epochs=4"],
        output_dir=str(root / "out"),
    )
    return run(cfg), uri, log.eval


def test_model_learns_the_planted_signal(trained) -> None:
    result, _, _ = trained
    assert result.metrics["eval/auc"] > 0.62, result.metrics  # chance is 0.5
    assert 0.0 < result.metrics["eval/ne"] < 1.0
    assert result.metrics["eval/num_examples"] == 1000


def test_mlflow_run_has_params_metrics_and_artifacts(trained) -> None:
    result, uri, _ = trained
    client = MlflowClient(uri)
    mlrun = client.get_run(result.run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["trainer.batch_size"] == "128"
    assert mlrun.data.params["data.features.genres.kind"] == "id_list"
    # Validation (the last 5% of the training rows, held out) at every epoch's end (then once
    # more when the best epoch's model was restored); eval once, at the end.
    valid = client.get_metric_history(result.run_id, "valid/auc")
    assert [m.step for m in valid][:4] == [23, 46, 69, 92]  # 2850 trained rows / 128 a step
    assert [m.step for m in client.get_metric_history(result.run_id, "eval/auc")] == [92]
    assert mlrun.data.tags["best_step"] == str(int(mlrun.data.metrics["best/step"]))
    assert len(client.get_metric_history(result.run_id, "train/loss")) >= 3
    top = {a.path for a in client.list_artifacts(result.run_id)}
    assert {
        "config.json",
        "schema.json",
        "sharding_plan.txt",
        "eval_predictions.parquet",
    } <= top
    # Train, the held-out validation slice and eval, as dataset inputs (the Dataset column).
    inputs = {i.tags[0].value: i.dataset for i in mlrun.inputs.dataset_inputs if i.tags}
    assert set(inputs) == {"train", "validation", "eval"}
    assert "data.holdout: tail 0.05" in inputs["validation"].source
    assert inputs["validation"].digest != inputs["train"].digest
    # The export travels as the run's logged model (a pyfunc holding the export folder).
    (output,) = mlrun.outputs.model_outputs
    model_files = client.list_logged_model_artifacts(output.model_id, "artifacts/export")
    exported = {Path(a.path).name for a in model_files}
    assert {"manifest.json", "dense.pt"} <= exported


def test_export_scores_equal_trained_model_predictions(trained) -> None:
    result, _, eval_path = trained
    predictions = pq.read_table(result.predictions_path)
    assert predictions["row_id"].to_pylist() == list(range(1000))
    scores = Scorer(result.export_dir).score(pq.read_table(eval_path))
    np.testing.assert_allclose(scores, predictions["prob"].to_numpy(), rtol=0, atol=1e-5)


def test_recsys_score_cli_on_csv_without_torchrec(trained, tmp_path: Path) -> None:
    """Raw CSV records, unseen users included, scored in a process that cannot import torchrec."""
    result, _, eval_path = trained
    table = pq.read_table(eval_path).drop(["label"])
    genres = pc.binary_join(table["genres"], "|")
    csv_path, out = tmp_path / "records.csv", tmp_path / "scores.parquet"
    pacsv.write_csv(
        table.set_column(table.schema.get_field_index("genres"), "genres", genres), csv_path
    )
    code = BLOCK_TORCHREC + "from recsys.cli.score import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(result.export_dir), str(csv_path), str(out)]
        + ["--format", "csv"],  # trained on Parquet: the manifest says parquet
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    scores = pq.read_table(out)["score"].to_numpy()
    expected = pq.read_table(result.predictions_path)["prob"].to_numpy()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    unseen = table["user_id"].to_numpy() > 10_000
    assert unseen.sum() == 200 and np.isfinite(scores[unseen]).all()


def test_manifest_describes_hashing_and_tables(trained) -> None:
    result, _, _ = trained
    manifest = Manifest.load(result.export_dir)
    assert manifest.raw["hashing"]["function"] == "mmh3_x86_32_unsigned"
    assert manifest.tables["user_id"]["num_buckets"] == 512
    assert manifest.tables["genres"]["dim"] == 16
    assert {f.name: f.seed for f in manifest.schema.features}["item_id"] == 102
    assert np.load(result.export_dir / "tables" / "user_id.npy").shape == (512, 16)


def test_corrupted_export_is_refused(trained, tmp_path: Path) -> None:
    import shutil

    result, _, _ = trained
    copy = tmp_path / "export"
    shutil.copytree(result.export_dir, copy)
    table = np.load(copy / "tables" / "item_id.npy")
    table[3, 0] += 1.0
    np.save(copy / "tables" / "item_id.npy", table)
    with pytest.raises(ExportError, match="checksum"):
        Scorer(copy)


def test_score_cli_reports_missing_column(trained, tmp_path: Path) -> None:
    result, _, eval_path = trained
    bad = tmp_path / "bad.parquet"
    pq.write_table(pq.read_table(eval_path).drop(["occupation"]), bad)
    code = "from recsys.cli.score import main; import sys; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(result.export_dir), str(bad), str(tmp_path / "o.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "occupation" in proc.stderr and str(bad) in proc.stderr


def test_tracking_off_still_trains(
    tiny_log, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(
        tiny_log.overrides + ["tracking=none", "export.enabled=false", "trainer.max_steps=5"],
        output_dir=str(tmp_path / "o"),
    )
    result = run(cfg)
    assert result.run_id is None and result.steps == 5
    assert "not recorded" in result.tracking or "off" in result.tracking
    assert np.isfinite(result.metrics["eval/auc"])


def test_inspect_run_notebook_runs_on_a_trained_model(
    trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other notebooks have their own tests (tests/notebooks)."""
    import nbformat

    notebook = Path(__file__).parents[1] / "notebooks" / "inspect_run.ipynb"
    from nbclient import NotebookClient

    result, uri, eval_path = trained
    monkeypatch.setenv("RECSYS_EXPORT_DIR", str(result.export_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RECSYS_DATA", str(eval_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
    ).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "points per curve: {'train/loss'" in outputs
    assert "correlation of item click rate with learnt bias" in outputs
