"""Links into the MLflow UI, and the command that serves it for a local store.

MLflow 3.17's UI opens an experiment in its GenAI view (traces, prompts) unless the page URL
carries `?workflowType=machine_learning` inside the hash route; every link the project prints
carries it, so a click lands on the runs table / run page of the model-training view.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Query (inside the hash route) that makes MLflow's UI show its model-training view.
ML_WORKFLOW_QUERY = "workflowType=machine_learning"
#: The runs-table view recsys links to: a shared view state stored as an experiment tag
#: (`mlflow.sharedViewState.<key>`), which the UI applies when the URL names its key. MLflow's
#: own default table shows no metric column; this one shows the ones people compare runs on.
RUNS_VIEW_KEY = "recsys"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"
RUNS_VIEW_COLUMNS = (
    "attributes.`Dataset`",
    "attributes.`Models`",
    *(
        f"metrics.`{m}`"
        for m in ("valid/auc", "eval/auc", "eval/log_loss", "eval/ne", "eval/calibration")
    ),
)
RUNS_VIEW_STATE = json.dumps(
    {
        "selectedColumns": list(RUNS_VIEW_COLUMNS),
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }
)
#: Where `make ui` / `mlflow ui` listen by default.
LOCAL_UI = "http://127.0.0.1:5000"


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The runs table of experiment `experiment_id`, in the model-training view, with recsys'
    columns (`RUNS_VIEW_STATE`; `/runs` itself: the bare experiment route drops the key)."""
    page = f"#/experiments/{experiment_id}/runs?viewStateShareKey={RUNS_VIEW_KEY}"
    return f"{base_url.rstrip('/')}/{page}&{ML_WORKFLOW_QUERY}"


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """The page of run `run_id`, in the model-training view."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?{ML_WORKFLOW_QUERY}"
    return f"{base_url.rstrip('/')}/{page}"


def ui_base_url(tracking_uri: str) -> str:
    """The UI's address: the server itself for http(s) stores, else the local `mlflow ui`."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_UI


def ui_command(tracking_uri: str, artifact_root: str | Path | None = None) -> str:
    """The shell command that serves the MLflow UI for a local store."""
    cmd = f"mlflow ui --backend-store-uri {tracking_uri}"
    if artifact_root is not None:
        cmd += f" --default-artifact-root {artifact_root}"
    return cmd


def local_ui_url(db_path: Path, experiment: str, port: int) -> str:
    """The link `make ui` prints: experiment `experiment`'s runs table when the SQLite store
    at `db_path` has it, else the experiments list; both in the model-training view.

    Reads the store with the standard library (no mlflow import: `make ui` stays quick).
    """
    import sqlite3

    base = f"http://127.0.0.1:{port}"
    if Path(db_path).is_file():
        try:
            with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
                row = db.execute(
                    "SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)
                ).fetchone()
        except sqlite3.Error:  # not (yet) an MLflow store: the list page still works
            row = None
        if row is not None:
            return experiment_url(base, str(row[0]))
    return f"{base}/#/experiments?{ML_WORKFLOW_QUERY}"
