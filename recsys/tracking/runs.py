"""Opening a run: where it is stored, which experiment, what it is called.

Where runs go, first match wins:

1. `tracking.uri` from the config;
2. the `MLFLOW_TRACKING_URI` environment variable;
3. the project default, a SQLite store `<cwd>/mlruns/mlflow.db` with artifacts in
   `<cwd>/mlruns/artifacts` (see `default_tracking_uri` and `default_artifact_root`).

When MLflow cannot be reached, `tracking.required=true` raises `TrackingError`; otherwise a
warning is logged and training goes on untracked. The reachability check fails fast: MLflow's
HTTP retries are switched off while it runs.

Run names are `<model>-<data>[-t<trial>]-<MMDD-HHMM>-<4 hex>` unless `tracking.run_name` is
set. The suffix comes from `secrets`, never from the seeded RNGs: two runs with the same seed
(which the trainer sets before the tracker opens) must still get different names.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from recsys.tracking.mlflow_tracker import MlflowTracker
from recsys.tracking.tracker import NullTracker, Tracker, TrackingError
from recsys.tracking.urls import RUNS_VIEW_STATE, RUNS_VIEW_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from recsys.config import TrackingConfig

logger = logging.getLogger(__name__)

#: The sweep callback puts the Hydra job number (trial) here for the job's run name.
SWEEP_TRIAL_ENV = "RECSYS_SWEEP_TRIAL"
#: Experiment tag that marks a model-training (not GenAI) experiment in MLflow 3's UI.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

#: Run tag with a sweep child's trial number (Hydra's job number).
TRIAL_TAG = "sweep.trial"
#: Seconds the reachability check waits for a tracking server before giving up.
REACHABILITY_TIMEOUT_S = 5

_PARENT_RUN_TAG = "mlflow.parentRunId"
_NOT_IN_NAME = re.compile(r"[^\w.]+")


def default_tracking_uri(cwd: Path) -> str:
    """The project's default store: `sqlite:///<abs cwd>/mlruns/mlflow.db`."""
    return f"sqlite:///{(Path(cwd).resolve() / 'mlruns' / 'mlflow.db').as_posix()}"


def default_artifact_root(cwd: Path) -> Path:
    """Where artifacts of the default store go: `<abs cwd>/mlruns/artifacts`."""
    return Path(cwd).resolve() / "mlruns" / "artifacts"


def resolve_tracking_uri(cfg: TrackingConfig, cwd: Path | None = None) -> str:
    """`cfg.uri`, else `$MLFLOW_TRACKING_URI`, else `default_tracking_uri(cwd)`."""
    return (
        cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(cwd or Path.cwd())
    )


def run_name(
    model: str | None, data: str | None, trial: int | None = None, now: datetime | None = None
) -> str:
    """A unique, telling run name, e.g. `dlrm-movielens-t3-1201-0153-9f2c`.

    Args:
        model: model name (left out when None).
        data: data name (left out when None).
        trial: sweep trial number (left out when None).
        now: the time stamped in the name (local time); defaults to now.
    """
    parts = [_NOT_IN_NAME.sub("_", p) for p in (model, data) if p]
    if trial is not None:
        parts.append(f"t{trial}")
    parts.append((now or datetime.now()).strftime("%m%d-%H%M"))
    parts.append(secrets.token_hex(2))  # OS entropy: independent of torch/numpy/random seeds
    return "-".join(parts)


def open_tracker(
    cfg: TrackingConfig,
    run_config: Any,
    *,
    enabled_on_this_rank: bool = True,
    parent_run_id: str | None = None,
) -> Tracker:
    """Start an MLflow run for this training job, or hand back a `NullTracker`.

    The run records system metrics (CPU, memory, disk, network) until it finishes, unless
    `MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`.

    Args:
        cfg: the `tracking` config group.
        run_config: the whole run's config (dataclass or mapping), logged flattened as params;
            its `model.name` and `data.name` go into the run name.
        enabled_on_this_rank: False on every rank but 0, so only one process logs.
        parent_run_id: nest the new run under this run (sweeps): sets `mlflow.parentRunId`.

    Returns:
        An `MlflowTracker` for the new, active run; a `NullTracker` when tracking is disabled,
        this is not rank 0, or MLflow is unreachable and `cfg.required` is false.

    Raises:
        TrackingError: MLflow cannot be reached (or refuses the run) and `cfg.required` is true.
    """
    if not enabled_on_this_rank:
        logger.debug("MLflow tracking is off on this rank; rank 0 logs the run.")
        return NullTracker("not rank 0")
    if not cfg.enabled:
        logger.info("MLflow tracking is off (tracking.enabled=false); training runs untracked.")
        return NullTracker("tracking.enabled=false")
    uri = resolve_tracking_uri(cfg)
    trial = _sweep_trial() if parent_run_id else None
    tags = _context_tags(parent_run_id, trial)
    try:
        tracker = _start_run(cfg, uri, tags, _name_for(cfg, run_config, trial))
    except Exception as err:
        return _unreachable(cfg, uri, err)
    if run_config is not None:
        tracker.log_params(run_config)
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() not in ("false", "0"):
        tracker.start_system_metrics()
    logger.info("MLflow tracking on: %s", tracker.describe())
    return tracker


def _sweep_trial() -> int | None:
    """The trial number the sweep callback left for this job, if any."""
    raw = os.environ.get(SWEEP_TRIAL_ENV, "")
    return int(raw) if raw.isdigit() else None


def _name_for(cfg: TrackingConfig, run_config: Any, trial: int | None) -> str:
    """`cfg.run_name`, else a generated name; a sweep trial's number is part of either."""
    if cfg.run_name:
        return cfg.run_name if trial is None else f"{cfg.run_name}-t{trial}"
    model = _text(_field(_field(run_config, "model"), "name"))
    data = _text(_field(_field(run_config, "data"), "name"))
    return run_name(model, data, trial)


def _field(obj: Any, key: str) -> Any:
    """`obj.key` or `obj[key]`; None when `obj` has neither."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value.value if isinstance(value, Enum) else value)


def _start_run(cfg: TrackingConfig, uri: str, tags: dict[str, str], name: str) -> MlflowTracker:
    """Create the experiment if missing and start a run in it (fast-failing when unreachable)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    artifact_root = _artifact_root_for(uri)
    with _fail_fast_http():
        experiment_id = _ensure_experiment(client, cfg.experiment, artifact_root)
    run = client.create_run(experiment_id, tags=tags, run_name=name)
    return MlflowTracker(
        client,
        run.info.run_id,
        experiment_id=experiment_id,
        experiment_name=cfg.experiment,
        tracking_uri=uri,
        artifact_root=str(artifact_root) if artifact_root else None,
        required=cfg.required,
        flush_timeout_s=cfg.flush_timeout_s,
    )


def _ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The id of experiment `name` (created when missing), tagged as a model-training one."""
    experiment = client.get_experiment_by_name(name)
    defaults = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, RUNS_VIEW_TAG: RUNS_VIEW_STATE}
    if experiment is not None:
        for tag, value in defaults.items():
            if tag not in experiment.tags:  # never override what a user chose
                client.set_experiment_tag(experiment.experiment_id, tag, value)
        return experiment.experiment_id
    location = None
    if artifact_root is not None:
        artifact_root.mkdir(parents=True, exist_ok=True)
        location = artifact_root.as_uri()
    logger.info(
        "Creating MLflow experiment '%s' (artifacts: %s)", name, location or "server default"
    )
    return client.create_experiment(name, artifact_location=location, tags=defaults)


def _artifact_root_for(uri: str) -> Path | None:
    """For a SQLite store file, `<abs db folder>/artifacts`; None (server decides) otherwise."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    # sqlite:////abs/path.db is absolute, sqlite:///rel/path.db relative to the cwd.
    raw = unquote(uri[len(prefix) :].split("?", 1)[0])
    if not raw or raw == ":memory:":
        return None
    db_path = Path(raw).resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    return db_path.parent / "artifacts"


def _context_tags(parent_run_id: str | None, trial: int | None) -> dict[str, str]:
    """MLflow's usual context tags (user, source, git commit), parent run and trial tags."""
    tags: dict[str, str] = {}
    try:
        from mlflow.tracking.context.registry import resolve_tags

        tags.update(resolve_tags())
    except Exception as err:  # context tags are nice to have, never worth failing for
        logger.debug("Could not resolve MLflow context tags: %s", err)
    if parent_run_id is not None:
        tags[_PARENT_RUN_TAG] = parent_run_id
    if trial is not None:
        tags[TRIAL_TAG] = str(trial)
    return tags


def _unreachable(cfg: TrackingConfig, uri: str, err: Exception) -> Tracker:
    """Raise `TrackingError` when tracking is required; otherwise warn and go untracked."""
    advice = (
        "start the tracking server, fix tracking.uri (or MLFLOW_TRACKING_URI), "
        "or set tracking.required=false to train untracked"
    )
    if cfg.required:
        raise TrackingError(
            f"Cannot reach or use MLflow at {uri}: {err}. To fix: {advice}."
        ) from err
    logger.warning(
        "Cannot reach or use MLflow at %s: %s. Training continues UNTRACKED (tracking.required=false). "
        "To track: start the tracking server, fix tracking.uri (or MLFLOW_TRACKING_URI), "
        "or set tracking.enabled=false to silence this warning.",
        uri,
        err,
    )
    return NullTracker(f"MLflow unreachable at {uri}")


@contextmanager
def _fail_fast_http() -> Iterator[None]:
    """No retries and a short timeout for MLflow HTTP calls inside the block.

    MLflow's defaults (7 retries with exponential backoff, 120 s timeout) take minutes to report
    an unreachable server. MLflow reads these variables on every request. (Once a tracker
    exists, its sender keeps them low for the whole process and retries on its own:
    `recsys.tracking.sender.use_fail_fast_http`.)
    """
    overrides = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REACHABILITY_TIMEOUT_S),
    }
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
