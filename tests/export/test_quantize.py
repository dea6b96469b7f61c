"""Smaller serving tables (export.table_dtype=fp16|int8): the quantizer, the scorer over stored
tables, the manifest's record of them and of the score error they cause."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hydra.errors import HydraException
from mlflow.tracking import MlflowClient
from omegaconf.errors import OmegaConfBaseException

from recsys.compose import explain, load_config
from recsys.config import ConfigError, TableDtype, TrainConfig
from recsys.data.source import SourceFormat
from recsys.export.manifest import MANIFEST_FILE, ExportError, Manifest
from recsys.export.measure import binary_auc, export_metrics
from recsys.export.quantize import dequantize_rows, encode, load_rows, quantize_rows
from recsys.export.scorer import Scorer
from recsys.export.writer import table_bytes, write_export
from recsys.metrics.binary import auc as reference_auc
from recsys.model.layout import ModelWeights
from recsys.model.registry import build_head, head_config
from recsys.schema import Schema
from recsys.train.recipe import run
from recsys.train.validate import validate
from tests.synthetic import TinyLog, write_tiny_log

# ------------------------------------------------------------------------------ quantizer


def _rows_of_mixed_scale(seed: int = 0) -> np.ndarray:
    """Rows whose norms span three orders of magnitude (as hashed tables' rows do), an
    all-zero row 0 (the missing-id bucket) and a constant row."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(200, 16)) * np.logspace(-3, 0, 200)[:, None]
    weight[0] = 0.0
    weight[7] = -0.25
    return weight.astype(np.float32)


def test_int8_round_trip_is_within_half_a_step_per_element() -> None:
    weight = _rows_of_mixed_scale()
    encoded = quantize_rows(weight)
    assert encoded.values.dtype == np.uint8 and encoded.row_params.dtype == np.float32
    assert encoded.row_params.shape == (200, 2)
    scale = encoded.row_params[:, :1]
    decoded = dequantize_rows(encoded.values, encoded.row_params)
    error = np.abs(decoded - weight)
    # scale / 2 from rounding to the nearest code, plus float32 rounding of the decode.
    assert (error <= scale / 2 + 1e-6 * np.abs(weight).max(axis=1, keepdims=True)).all()
    assert error.max() > 0.1 * scale.max() / 2  # it did quantize (a test that can fail)
    # Each row uses its own range: the smallest rows keep their relative precision.
    relative = error.max(axis=1) / np.maximum(np.abs(weight).max(axis=1), 1e-30)
    assert relative[1:].max() < 1.5 / 255


def test_all_equal_rows_decode_exactly() -> None:
    weight = _rows_of_mixed_scale()
    encoded = quantize_rows(weight)
    decoded = dequantize_rows(encoded.values, encoded.row_params)
    assert np.array_equal(decoded[0], np.zeros(16, dtype=np.float32))  # missing-id row
    assert np.array_equal(decoded[7], np.full(16, -0.25, dtype=np.float32))
    assert encoded.row_params[0, 0] == 0.0 and encoded.row_params[7, 0] == 0.0


def test_non_finite_weights_are_an_error_naming_the_table() -> None:
    weight = _rows_of_mixed_scale()
    weight[3, 2] = np.nan
    with pytest.raises(ValueError, match="table 'user_id' has non-finite"):
        encode(weight, TableDtype.int8, "user_id")
    with pytest.raises(ValueError, match="beyond float16's range"):
        encode(np.full((2, 2), 1e6, dtype=np.float32), TableDtype.fp16, "item_id")


# ------------------------------------------------------------------------ exports of weights


@dataclass
class Model:
    cfg: TrainConfig
    schema: Schema
    weights: ModelWeights
    log: TinyLog


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The tiny log's schema and a DLRM head with random weights (no training: what is
    measured is storage, not learning); tables of mixed row scales as trained ones have."""
    log = write_tiny_log(tmp_path_factory.mktemp("quantize"))
    cfg = load_config(log.overrides + ["tracking=none"], output_dir="unused")
    schema = validate(cfg)
    head = head_config(schema, cfg.model)
    torch.manual_seed(0)
    dense = build_head(head).state_dict()
    rng = np.random.default_rng(1)
    tables, first_order = {}, {}
    for t in schema.tables:
        norms = np.logspace(-2, 0, t.num_buckets)[rng.permutation(t.num_buckets), None]
        tables[t.name] = torch.from_numpy(
            (rng.normal(size=(t.num_buckets, t.embedding_dim)) * norms).astype(np.float32)
        )
        first_order[t.name] = torch.from_numpy(
            rng.normal(size=(t.num_buckets, 2)).astype(np.float32) * 0.3
        )
    return Model(cfg, schema, ModelWeights(tables, first_order, dense), log)


def _export(model: Model, root: Path, dtype: TableDtype, measure: bool = True) -> Path:
    return write_export(
        root / f"export-{dtype.value}",
        model.schema,
        head_config(model.schema, model.cfg.model),
        model.weights,
        source=SourceFormat.from_config(model.cfg.data),
        table_dtype=dtype,
        measure_on=str(model.log.eval) if measure else None,
    )


def _scores_and_labels(export_dir: Path, log: TinyLog) -> tuple[np.ndarray, np.ndarray]:
    records = pq.read_table(log.eval)
    return Scorer(export_dir).score(records), records.column("label").to_numpy()


@pytest.mark.parametrize("dtype", [TableDtype.fp16, TableDtype.int8])
def test_scores_match_fp32_within_the_recorded_error(
    model: Model, tmp_path: Path, dtype: TableDtype
) -> None:
    fp32, _ = _scores_and_labels(_export(model, tmp_path, TableDtype.fp32), model.log)
    export = _export(model, tmp_path, dtype)
    got, labels = _scores_and_labels(export, model.log)
    measured = Manifest.load(export).raw["quantization"]
    assert measured["rows_measured"] == len(got) == 1000
    error = np.abs(got - fp32).max()
    assert 0 < error <= measured["max_abs_score_error"] + 1e-12
    assert measured["max_abs_score_error"] == pytest.approx(error, rel=1e-6)
    assert measured["max_abs_score_error"] < (1e-3 if dtype is TableDtype.fp16 else 2e-2)
    # AUCs the measurement recorded, against the training metrics' own AUC implementation.
    y = torch.from_numpy(labels.astype(np.float64))
    assert measured["eval_auc"] == pytest.approx(reference_auc(y, torch.from_numpy(got)), abs=1e-9)
    assert measured["eval_auc_fp32"] == pytest.approx(
        reference_auc(y, torch.from_numpy(fp32)), abs=1e-9
    )
    assert measured["auc_change"] == pytest.approx(
        measured["eval_auc"] - measured["eval_auc_fp32"], abs=1e-12
    )


def test_manifest_records_dtype_files_and_checksums(model: Model, tmp_path: Path) -> None:
    export = _export(model, tmp_path, TableDtype.int8, measure=False)
    manifest = Manifest.load(export)
    assert manifest.raw["table_dtype"] == "int8"
    assert "quantization" not in manifest.raw  # measure_on=None: not measured, not invented
    for name, entry in manifest.tables.items():
        assert entry["dtype"] == "int8"
        assert np.load(export / entry["file"]).dtype == np.uint8
        params = np.load(export / entry["row_params"]["file"])
        assert params.shape == (entry["num_buckets"], 2) and params.dtype == np.float32
        assert entry["first_order"]["dtype"] == "fp16"
        assert np.load(export / entry["first_order"]["file"]).dtype == np.float16
        decoded = load_rows(export, entry).full()
        source = model.weights.tables[name].numpy()
        assert np.abs(decoded - source).max() <= params[:, 0].max() / 2 + 1e-6
    manifest.verify(export)
    fp32 = _export(model, tmp_path, TableDtype.fp32, measure=False)
    assert Manifest.load(fp32).tables["user_id"]["dtype"] == "fp32"
    ratio = table_bytes(export) / table_bytes(fp32)
    assert ratio < 0.5, ratio  # uint8 codes + 8 bytes a row vs 4 bytes an element (dim 16)
    assert manifest.raw["table_bytes"] == table_bytes(export)


def test_tampered_quantization_file_fails_verification_naming_it(
    model: Model, tmp_path: Path
) -> None:
    export = _export(model, tmp_path, TableDtype.int8, measure=False)
    params_file = export / Manifest.load(export).tables["user_id"]["row_params"]["file"]
    params = np.load(params_file)
    params[5, 0] *= 2  # one row's scale doubled: scores move, shapes do not
    np.save(params_file, params)
    with pytest.raises(ExportError, match=r"user_id__row_params\.npy: checksum mismatch"):
        Scorer(export)


def test_a_version_1_export_still_reads_as_fp32(model: Model, tmp_path: Path) -> None:
    """Exports written before table_dtype (format v1: float32, no `dtype` keys) keep serving."""
    export = _export(model, tmp_path, TableDtype.fp32, measure=False)
    want = Scorer(export).score(pq.read_table(model.log.eval))
    raw = json.loads((export / MANIFEST_FILE).read_text())
    for key in ("table_dtype", "table_bytes"):
        del raw[key]
    for entry in raw["tables"].values():
        del entry["dtype"], entry["first_order"]["dtype"]
    (export / MANIFEST_FILE).write_text(json.dumps({**raw, "format_version": 1}))
    np.testing.assert_array_equal(Scorer(export).score(pq.read_table(model.log.eval)), want)
    (export / MANIFEST_FILE).write_text(json.dumps({**raw, "format_version": 0}))
    with pytest.raises(ExportError, match="v0 is older than this recsys reads"):
        Scorer(export)


def test_binary_auc_counts_ties_as_half() -> None:
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.9, 0.2, 0.1, 0.5])
    want = reference_auc(torch.tensor(labels, dtype=torch.float64), torch.tensor(scores))
    assert binary_auc(labels, scores) == pytest.approx(want, abs=1e-12)
    assert np.isnan(binary_auc(np.ones(3), np.arange(3.0)))


def test_export_metrics_for_the_tracker(model: Model, tmp_path: Path) -> None:
    fp32 = _export(model, tmp_path, TableDtype.fp32)  # measure_on given: fp32 measures nothing
    assert "quantization" not in Manifest.load(fp32).raw
    assert export_metrics(fp32) == {"export/table_bytes": float(table_bytes(fp32))}
    int8 = _export(model, tmp_path, TableDtype.int8)
    measured = Manifest.load(int8).raw["quantization"]
    metrics = export_metrics(int8)
    assert metrics["export/max_score_error"] == measured["max_abs_score_error"] > 0
    assert metrics["export/auc_change"] == measured["auc_change"]
    assert metrics["export/table_bytes"] == table_bytes(int8)


def test_quantization_eval_rows_bounds_the_measurement(model: Model, tmp_path: Path) -> None:
    export = write_export(
        tmp_path / "export",
        model.schema,
        head_config(model.schema, model.cfg.model),
        model.weights,
        source=SourceFormat.from_config(model.cfg.data),
        table_dtype=TableDtype.fp16,
        measure_on=str(model.log.eval),
        measure_rows=37,
    )
    assert Manifest.load(export).raw["quantization"]["rows_measured"] == 37


def test_bad_export_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"export\.quantization_eval_rows=-1: must be >= 0"):
        validate(load_config(["export.quantization_eval_rows=-1"]))
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        load_config(["export.table_dtype=int4"])  # a choice: fails at composition
    message = explain(info.value)
    assert "export.table_dtype" in message and "int8" in message, message


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow  # ~25 s on 2 cores: a tracked run, then a warm start from its export
def test_recipe_int8_export_scores_like_the_trained_model(tmp_path: Path) -> None:
    """The real recipe on the tiny log with export.table_dtype=int8: the served scores are the
    trained model's predictions within the error the manifest records, which the MLflow run
    records too; a warm start from that export starts from the decoded weights."""
    log = write_tiny_log(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    overrides = [f"tracking.uri={uri}", "trainer.epochs=2", "export.table_dtype=int8"]
    result = run(load_config(log.overrides + overrides, output_dir=str(tmp_path / "out")))
    manifest = Manifest.load(result.export_dir)
    measured = manifest.raw["quantization"]
    assert {t["dtype"] for t in manifest.tables.values()} == {"int8"}
    assert measured["rows_measured"] == 1000
    assert result.metrics["eval/auc"] > 0.6  # it learned something worth measuring
    assert measured["eval_auc_fp32"] == pytest.approx(result.metrics["eval/auc"], abs=1e-4)
    assert abs(measured["auc_change"]) < 0.01
    scores = Scorer(result.export_dir).score(pq.read_table(log.eval))
    trained = pq.read_table(result.predictions_path)["prob"].to_numpy()
    error = np.abs(scores - trained).max()
    # The fp32 scorer equals the trained model within 1e-5 (tests/test_end_to_end.py).
    assert 0 < error <= measured["max_abs_score_error"] + 1e-5
    assert measured["max_abs_score_error"] < 0.02
    tracked = MlflowClient(uri).get_run(result.run_id).data
    assert tracked.params["export.table_dtype"] == "int8"
    assert tracked.metrics["export/max_score_error"] == measured["max_abs_score_error"]
    assert tracked.metrics["export/auc_change"] == pytest.approx(measured["auc_change"])
    assert tracked.metrics["export/table_bytes"] == manifest.raw["table_bytes"]

    # Warm start from the int8 export, no step: predictions are the int8 scorer's (uint8 codes
    # copied as weights would score nothing alike).
    warm = ["tracking=none", "trainer.max_steps=0", f"trainer.warm_start={result.export_dir}"]
    run(load_config(log.overrides + warm, output_dir=str(tmp_path / "warm")))
    warm_probs = pq.read_table(tmp_path / "warm" / "eval_predictions.parquet")["prob"]
    np.testing.assert_allclose(warm_probs.to_numpy(), scores, rtol=0, atol=1e-5)
