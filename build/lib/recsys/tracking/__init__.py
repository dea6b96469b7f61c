"""Experiment tracking (MLflow). `open_tracker` gives a `Tracker`; see `mlflow_tracker`.

Importing this package is cheap: `mlflow` itself is imported only when a run is opened.
"""

from recsys.tracking.mlflow_tracker import (
    MlflowTracker,
    NullTracker,
    Tracker,
    TrackingError,
    default_artifact_root,
    default_tracking_uri,
    flatten_params,
    open_tracker,
    resolve_tracking_uri,
    ui_command,
)

__all__ = [
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "TrackingError",
    "default_artifact_root",
    "default_tracking_uri",
    "flatten_params",
    "open_tracker",
    "resolve_tracking_uri",
    "ui_command",
]
