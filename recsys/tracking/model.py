"""The serving export as an MLflow model: logged with its run, registered, and promoted.

`log_and_register` logs the export folder (recsys.export) as a pyfunc model of the run — a
`ScorerModel` whose `predict` turns a pandas DataFrame of raw records into click probabilities
with the torch-only `Scorer` — with a signature built from the schema and an input example of
raw records. With a name (`tracking.register_as`) it registers a new version of that model,
tags it with the run's eval and validation metrics, and moves the alias `champion` to it when
its validation AUC beats the current champion's (or there is none). `make serve` serves
`models:/NAME@champion`.

The model is stored as code (MLflow "models from code"), not as a pickle: loading it imports
`ScorerModel` from this module, so the serving box needs recsys installed (plus torch, numpy,
pyarrow, pandas and mlflow), as `mlflow models serve --env-manager local` gives it.

Raw records over REST: ids are strings (an integer id's decimal text hashes like the integer
itself, so "42" and 42 are the same id); an id list is one string joined with the feature's
`delimiter` (or, for a feature without one, an array of strings); dense values are doubles;
null or "" is a missing id.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import pandas as pd
import pyarrow as pa

from recsys.config import DenseTransform, FeatureKind
from recsys.schema import Schema
from recsys.tracking.mlflow_tracker import MlflowTracker
from recsys.tracking.tracker import Tracker, TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel
    from mlflow.models import ModelSignature

    from recsys.export.scorer import Scorer

logger = logging.getLogger(__name__)
# Saving the model validates its input example by downloading the artifacts it just wrote,
# with a progress bar per file: dozens of bars in the training log for nothing.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: The alias that `make serve` serves; it moves only to a version with a better validation AUC.
CHAMPION_ALIAS = "champion"
#: The logged model's name inside its run (the run's "Logged models" list).
LOGGED_MODEL_NAME = "scorer"
#: Key of the export folder among the model's artifacts (`context.artifacts`).
EXPORT_ARTIFACT = "export"
#: Version tags: which metric decided promotion, and its value.
TAG_VALIDATION_METRIC = "validation_metric"
TAG_VALIDATION_AUC = "validation_auc"
#: The metric preferred for promotion, and the fallback when the run had no validation split.
VALIDATION_AUC, EVAL_AUC = "valid/auc", "eval/auc"
#: An id that no training run has seen: the input example shows how such ids are scored.
UNSEEN_ID = "never-seen-id"
#: Third-party packages the scorer imports (recorded as the model's requirements).
_REQUIREMENTS = ("mlflow", "torch", "numpy", "pyarrow", "pandas", "mmh3", "omegaconf", "pyyaml")
#: The model's code (MLflow "models from code"): what serving runs instead of unpickling.
_MODEL_CODE = '''"""recsys serving model: raw records in, click probabilities out (recsys.tracking.model)."""
import mlflow

from recsys.tracking.model import ScorerModel

mlflow.models.set_model(ScorerModel())
'''


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered version of the export and whether it became the champion."""

    name: str
    version: str
    model_uri: str  # models:/NAME/VERSION
    validation_metric: str | None  # "valid/auc", "eval/auc", or None when the run had neither
    validation_auc: float | None
    champion: bool  # the alias `champion` points at this version now


class ScorerModel(mlflow.pyfunc.PythonModel):
    """A pyfunc around `recsys.export.scorer.Scorer`: one click probability per input row."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Build the scorer from the export folder stored with the model (checksums verified)."""
        from recsys.export.scorer import Scorer

        self.scorer: Scorer = Scorer(Path(context.artifacts[EXPORT_ARTIFACT]))

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Click probabilities for raw records: a `score` column, in input order."""
        # NaN in a float column becomes null here, which the featurizer reads as missing.
        records = pa.Table.from_pandas(model_input, preserve_index=False)
        return pd.DataFrame({"score": self.scorer.score(records)})


# ------------------------------------------------------------------------------ entry point


def log_and_register(
    tracker: Tracker,
    export_dir: Path,
    schema: Schema,
    metrics: dict[str, float],
    register_as: str | None,
) -> ModelVersionInfo | None:
    """Log the export as the run's pyfunc model; register it as `register_as` when given.

    Args:
        tracker: the run's tracker; any but an `MlflowTracker` with a run (tracking off,
            unreachable, not rank 0) logs nothing and this returns None.
        export_dir: the serving export folder (`recsys.export.writer.write_export`).
        schema: the schema the export was trained with (signature and input example).
        metrics: the run's final eval metrics (e.g. `eval/auc`); merged over the run's logged
            metrics, which hold the last `valid/*` values.
        register_as: registered model name; None logs the model without registering it.

    Returns:
        The new version (and whether it is the champion now), or None when not registered.

    Raises:
        TrackingError: an MLflow call failed and the tracker has `required` set; otherwise
            the failure is logged as a warning and None is returned (training has succeeded,
            a registry hiccup should not fail it).
    """
    if not isinstance(tracker, MlflowTracker) or tracker.run_id is None:
        logger.info("Model not logged to MLflow: %s", tracker.describe())
        return None
    client = tracker.client
    try:
        # The run's own calls (export artifacts, last metrics) go first: registration reads them.
        if not tracker.wait_sent():
            raise TimeoutError(
                f"tracking calls still queued after tracking.flush_timeout_s="
                f"{tracker.flush_timeout_s:g} s (is the server away?)"
            )
        model = _log_model(client, tracker.run_id, Path(export_dir), schema)
        if register_as is None:
            logger.info(
                "Logged model %s (not registered: tracking.register_as=null)", model.model_id
            )
            return None
        run_metrics = {**client.get_run(tracker.run_id).data.metrics, **metrics}
        return register_version(client, register_as, model.model_id, tracker.run_id, run_metrics)
    except Exception as err:
        what = f"logging/registering the export {export_dir} as MLflow model {register_as!r}"
        if tracker.required:
            raise TrackingError(
                f"{what} failed for run {tracker.run_id}: {err}. Check the tracking store, or "
                "set tracking.required=false to finish the run without a registered model."
            ) from err
        logger.warning(
            "%s failed for run %s: %s; the export is on disk.", what, tracker.run_id, err
        )
        return None


# ------------------------------------------------------------------------------- logging


def _log_model(client: MlflowClient, run_id: str, export_dir: Path, schema: Schema) -> LoggedModel:
    """Save the pyfunc (export folder as artifact) and log it as a model output of the run.

    The steps `mlflow.pyfunc.log_model` takes, through this client instead of MLflow's global
    tracking URI and active run (the tracker keeps neither).
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(
        experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id, model_type="recsys-scorer"
    )
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    with tempfile.TemporaryDirectory(prefix="recsys-model-") as tmp:
        code, local = Path(tmp) / "scorer_model.py", Path(tmp) / "model"
        code.write_text(_MODEL_CODE)
        mlflow.pyfunc.save_model(
            path=str(local),
            python_model=str(code),
            artifacts={EXPORT_ARTIFACT: str(export_dir)},
            signature=model_signature(schema),
            input_example=input_example(schema),
            pip_requirements=_requirements(),
            mlflow_model=Model(
                artifact_path=model.artifact_location,
                model_uuid=model.model_id,
                run_id=run_id,
                model_id=model.model_id,
            ),
        )
        client.log_model_artifacts(model.model_id, str(local))
    client.finalize_logged_model(model.model_id, "READY")
    return model


def model_signature(schema: Schema) -> ModelSignature:
    """Inputs: one column per source column the schema reads (label excluded); output: `score`.

    Ids are strings; an id list is a string joined with its `delimiter`, or an array of strings
    for a feature without one; dense columns are doubles.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType
    from mlflow.types.schema import Schema as ColumnSchema

    def spec(column: str, kind: str) -> ColSpec:
        if kind == "array":
            return ColSpec(Array(DataType.string), column)
        return ColSpec(DataType.double if kind == "double" else DataType.string, column)

    inputs = ColumnSchema([spec(c, k) for c, k in _column_kinds(schema).items()])
    outputs = ColumnSchema([ColSpec(DataType.double, "score")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(schema: Schema) -> pd.DataFrame:
    """Three raw records: known-looking ids, an id no run has seen, and missing values."""
    columns: dict[str, list[Any]] = {}
    for column, kind in _column_kinds(schema).items():
        if kind == "double":
            typical = _typical_dense(schema, column)
            columns[column] = [typical, typical * 2.0, None]
        elif kind == "array":
            columns[column] = [["1", "2"], [UNSEEN_ID], []]
        else:
            delimiter = _delimiter(schema, column)
            first = f"1{delimiter}2" if delimiter else "1"
            columns[column] = [first, UNSEEN_ID, None]
    return pd.DataFrame(columns)


def _column_kinds(schema: Schema) -> dict[str, str]:
    """Each source column the features read -> "string", "array" or "double".

    A column read both as an id and as a dense value travels as a string (the dense read
    parses it); an id list without a delimiter is an array of strings.
    """
    kinds: dict[str, str] = {}
    for feature in schema.features:
        if feature.kind is FeatureKind.dense:
            kind = "double"
        elif feature.kind is FeatureKind.id_list and feature.delimiter is None:
            kind = "array"
        else:
            kind = "string"
        if kinds.get(feature.column, "double") == "double":
            kinds[feature.column] = kind
    kinds.pop(schema.label.column, None)
    return kinds


def _typical_dense(schema: Schema, column: str) -> float:
    """A raw value near the feature's mean (undoing log1p), for the input example."""
    feature = next(f for f in schema.dense_features if f.column == column)
    if feature.transform is DenseTransform.log1p:
        return round(math.expm1(feature.mean), 3)
    return round(feature.mean, 3)


def _delimiter(schema: Schema, column: str) -> str | None:
    found = [f.delimiter for f in schema.features if f.column == column and f.delimiter]
    return found[0] if found else None


def _requirements() -> list[str]:
    """The scorer's third-party packages pinned to the versions installed here."""
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


# ---------------------------------------------------------------------------- registering


def register_version(
    client: MlflowClient, name: str, model_id: str, run_id: str, metrics: dict[str, float]
) -> ModelVersionInfo:
    """Register the logged model `model_id` as a new version of `name` (created if missing).

    The version is tagged with the run's `eval/*` and `valid/*` metrics, the metric that
    decides promotion and its value; `champion` moves to it if it wins (`promote_if_better`).
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="recsys click model (serving export); `make serve` serves @champion."
        )
    metric_name, auc = validation_auc(metrics)
    tags = {k: _text(v) for k, v in metrics.items() if k.startswith(("eval/", "valid/"))}
    tags[TAG_VALIDATION_METRIC] = metric_name or "none"
    if auc is not None:
        tags[TAG_VALIDATION_AUC] = _text(auc)
    # The source is the logged model's own location, not "models:/<id>": a SQLite registry
    # resolves that through MLflow's *global* tracking URI, not this client's (MLflow 3.17).
    source = client.get_logged_model(model_id).artifact_location
    version = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
    _link_version(client, model_id, name, str(version.version))
    champion = promote_if_better(client, name, version.version, auc)
    logger.info(
        "Registered MLflow model %s version %s (%s=%s)%s; serve it with `make serve MODEL=%s`.",
        name, version.version, metric_name, auc,
        " — the new champion" if champion else f", {CHAMPION_ALIAS} unchanged", name,
    )  # fmt: skip
    return ModelVersionInfo(
        name=name,
        version=str(version.version),
        model_uri=f"models:/{name}/{version.version}",
        validation_metric=metric_name,
        validation_auc=auc,
        champion=champion,
    )


def _link_version(client: MlflowClient, model_id: str, name: str, version: str) -> None:
    """Name the version on its logged model (the `mlflow.modelVersions` tag), as
    `mlflow.register_model` does: the UI's Models column and the run page's logged-model
    table read it there (a SQLite registry does not keep the version's `model_id`)."""
    tag = "mlflow.modelVersions"
    listed = json.loads(client.get_logged_model(model_id).tags.get(tag) or "[]")
    listed.append({"name": name, "version": version})
    client.set_logged_model_tags(model_id, {tag: json.dumps(listed)})


def validation_auc(metrics: dict[str, float]) -> tuple[str | None, float | None]:
    """The metric that decides promotion: `valid/auc` when the run has it, else `eval/auc`."""
    for key in (VALIDATION_AUC, EVAL_AUC):
        value = metrics.get(key)
        if value is not None and math.isfinite(value):
            return key, float(value)
    return None, None


def promote_if_better(client: MlflowClient, name: str, version: str, auc: float | None) -> bool:
    """Point `champion` at `version` when its AUC beats the champion's, or there is none.

    A champion without a recorded AUC (aliased by hand) is replaced by any version with one;
    a version without an AUC only becomes champion where there is none yet.

    Returns:
        True when the alias now points at `version`.
    """
    current = _champion(client, name)
    if current is not None:
        best = current.tags.get(TAG_VALIDATION_AUC)
        if auc is None or (best is not None and auc <= float(best)):
            logger.info(
                "%s %s stays at version %s (AUC %s); version %s has AUC %s.",
                name, CHAMPION_ALIAS, current.version, best, version, auc,
            )  # fmt: skip
            return False
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    return True


def _champion(client: MlflowClient, name: str) -> Any:
    """The version the alias points at, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(err).lower():
            return None
        raise


def _text(value: float) -> str:
    """A metric as a tag value: full precision, so comparisons read back exactly."""
    return repr(float(value))
