"""Experiment tracking (MLflow). `open_tracker` gives a `Tracker`; see `tracker`.

Importing this package is cheap: `mlflow` itself is imported only when a run is opened.
"""

from recsys.tracking.datasets import dataset_input
from recsys.tracking.mlflow_tracker import MlflowTracker
from recsys.tracking.params import flatten_params
from recsys.tracking.runs import (
    default_artifact_root,
    default_tracking_uri,
    open_tracker,
    resolve_tracking_uri,
    run_name,
)
from recsys.tracking.tags import fingerprint_tags, log_data_fingerprint, run_tags
from recsys.tracking.tracker import NullTracker, Tracker, TrackingError
from recsys.tracking.urls import experiment_url, run_url, ui_command

__all__ = [
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "TrackingError",
    "dataset_input",
    "default_artifact_root",
    "default_tracking_uri",
    "experiment_url",
    "fingerprint_tags",
    "flatten_params",
    "log_data_fingerprint",
    "open_tracker",
    "resolve_tracking_uri",
    "run_name",
    "run_tags",
    "run_url",
    "ui_command",
]
