"""Experiment tracking: the only module in the code base that talks to MLflow.

Training code logs through a `Tracker`. `open_tracker` returns an `MlflowTracker` (one MLflow
run) when tracking is on and this is rank 0, and a `NullTracker` (does nothing) otherwise, so the
training loop never branches on whether tracking is on.

Where runs go, first match wins:

1. `tracking.uri` from the config;
2. the `MLFLOW_TRACKING_URI` environment variable;
3. the project default, a SQLite store `<cwd>/mlruns/mlflow.db` with artifacts in
   `<cwd>/mlruns/artifacts` (see `default_tracking_uri` and `default_artifact_root`).

When MLflow cannot be reached, `tracking.required=true` raises `TrackingError`; otherwise a
warning is logged and training goes on untracked. The reachability check fails fast: MLflow's
HTTP retries are switched off while it runs.

`mlflow` takes seconds to import, so it is imported lazily: `import recsys.tracking` is cheap
and a `NullTracker` never imports it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

    from recsys.config import TrackingConfig

logger = logging.getLogger(__name__)

#: MLflow's limit on a param value's length (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_VALUE_LENGTH = 6000
#: MLflow's limit on params (and tags) per `log_batch` call (MAX_PARAMS_TAGS_PER_BATCH).
MAX_PARAMS_PER_BATCH = 100
#: MLflow's limit on metrics per `log_batch` call (MAX_METRICS_PER_BATCH).
MAX_METRICS_PER_BATCH = 1000
#: Seconds the reachability check waits for a tracking server before giving up.
REACHABILITY_TIMEOUT_S = 5

_PARENT_RUN_TAG = "mlflow.parentRunId"
_TRUNCATION_MARKER = "...[truncated]"
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")
_TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")


class TrackingError(RuntimeError):
    """MLflow could not be reached (or refused a call) and `tracking.required=true`."""


# ------------------------------------------------------------------------------------ trackers


class Tracker:
    """What training code logs through; the base class is also the no-op behaviour.

    A tracker is a context manager: leaving the `with` block finishes the run, as FAILED when
    an exception escapes it (KILLED on Ctrl-C), as FINISHED otherwise.
    """

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log run parameters; nested values are flattened (see `flatten_params`)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metric values, at `step` when given (MLflow then plots them by step)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload one local file, into the run's `artifact_path` folder when given."""

    def log_artifacts(self, dir: Path, artifact_path: str | None = None) -> None:
        """Upload a local folder's contents, into the run's `artifact_path` folder when given."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store `text` as the artifact file `artifact_file` (e.g. "notes/summary.txt")."""

    def log_dict(self, d: dict[str, Any], artifact_file: str) -> None:
        """Store `d` as JSON or YAML, chosen by the extension of `artifact_file`."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (searchable key/value strings)."""

    def log_figure(self, fig: Figure, artifact_file: str) -> None:
        """Store a matplotlib figure as an image artifact (e.g. "plots/loss.png")."""

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with `status` (FINISHED, FAILED or KILLED); later calls do nothing."""

    def describe(self) -> str:
        """A one-line hint for people: where the run is and how to look at it."""
        return "MLflow tracking is off."

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(_status_for(exc_type))


class NullTracker(Tracker):
    """Logs nothing: tracking is disabled, unreachable, or this is not rank 0."""

    def __init__(self, reason: str = "tracking.enabled=false") -> None:
        """Args:
        reason: why tracking is off, repeated by `describe()`.
        """
        self.run_id = None
        self.reason = reason

    def describe(self) -> str:
        """Say that tracking is off and why."""
        return f"MLflow tracking is off ({self.reason}); this run is not recorded."


class MlflowTracker(Tracker):
    """One MLflow run, driven through `MlflowClient` (no global active-run state).

    After a failed MLflow call the tracker raises `TrackingError` when `required`; otherwise it
    warns once and turns into a no-op, so a tracking server going down mid-run does not stop
    training.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        experiment_id: str,
        experiment_name: str,
        tracking_uri: str,
        artifact_root: str | None = None,
        required: bool = False,
    ) -> None:
        """Wrap an already created, active run.

        Args:
            client: client bound to `tracking_uri`.
            run_id: the run to log into.
            experiment_id: id of the run's experiment (for UI links).
            experiment_name: name of the run's experiment (for messages).
            tracking_uri: where the run is stored.
            artifact_root: the experiment's artifact location (for the `mlflow ui` hint).
            required: raise `TrackingError` on a failed MLflow call instead of going untracked.
        """
        self._client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.required = required
        self._broken = False
        self._finished = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log `params` flattened to dotted keys, in batches of at most 100."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten_params(params).items()]
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
            self._call("log params", self._client.log_batch, self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log `metrics` in one batch, at `step` (0 when not given)."""
        import time

        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        items = [Metric(k, float(v), now_ms, step or 0) for k, v in metrics.items()]
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            self._call("log metrics", self._client.log_batch, self.run_id, metrics=chunk)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload the file `path`."""
        self._call("log artifact", self._client.log_artifact, self.run_id, str(path), artifact_path)

    def log_artifacts(self, dir: Path, artifact_path: str | None = None) -> None:
        """Upload the contents of the folder `dir`."""
        self._call(
            "log artifacts", self._client.log_artifacts, self.run_id, str(dir), artifact_path
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store `text` as `artifact_file`."""
        self._call("log text", self._client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, d: dict[str, Any], artifact_file: str) -> None:
        """Store `d` as JSON/YAML; Enums and Paths are written as their value / string."""
        clean = json.loads(json.dumps(d, default=_json_default))
        self._call("log dict", self._client.log_dict, self.run_id, clean, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags in batches of at most 100."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
            self._call("set tags", self._client.log_batch, self.run_id, tags=chunk)

    def log_figure(self, fig: Figure, artifact_file: str) -> None:
        """Store the matplotlib figure `fig` as `artifact_file`."""
        self._call("log figure", self._client.log_figure, self.run_id, fig, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run terminated with `status`; only the first call has an effect."""
        if self._finished:
            return
        if status not in _TERMINAL_STATUSES:
            raise ValueError(f"status={status!r}: expected one of {_TERMINAL_STATUSES}")
        self._finished = True
        self._call("finish run", self._client.set_terminated, self.run_id, status)
        logger.info("MLflow run %s ended %s. %s", self.run_id, status, self.describe())

    def describe(self) -> str:
        """Where the run is and how to open it in the MLflow UI."""
        where = f"MLflow run {self.run_id} in experiment '{self.experiment_name}'"
        page = f"#/experiments/{self.experiment_id}/runs/{self.run_id}"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{where}: open {self.tracking_uri.rstrip('/')}/{page}"
        return (
            f"{where} (store {self.tracking_uri}); view it with `{ui_command(self.tracking_uri, self.artifact_root)}`"
            f" and open http://127.0.0.1:5000/{page}"
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run one MLflow call; on failure raise (required) or warn once and go untracked."""
        if self._broken:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:
            if self.required:
                raise TrackingError(
                    f"MLflow call '{what}' failed for run {self.run_id} at {self.tracking_uri}: "
                    f"{err}. Check the tracking server, or set tracking.required=false to let "
                    "training go on untracked."
                ) from err
            self._broken = True
            logger.warning(
                "MLflow call '%s' failed for run %s at %s: %s. Training continues; "
                "nothing more is logged to MLflow for this run.",
                what,
                self.run_id,
                self.tracking_uri,
                err,
            )


# ------------------------------------------------------------------------------ opening a run


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


def ui_command(tracking_uri: str, artifact_root: str | Path | None = None) -> str:
    """The shell command that serves the MLflow UI for a local store."""
    cmd = f"mlflow ui --backend-store-uri {tracking_uri}"
    if artifact_root is not None:
        cmd += f" --default-artifact-root {artifact_root}"
    return cmd


def open_tracker(
    cfg: TrackingConfig,
    run_config: Any,
    *,
    enabled_on_this_rank: bool = True,
    parent_run_id: str | None = None,
) -> Tracker:
    """Start an MLflow run for this training job, or hand back a `NullTracker`.

    Args:
        cfg: the `tracking` config group.
        run_config: the whole run's config (dataclass or mapping), logged flattened as params.
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
    try:
        tracker = _start_run(cfg, uri, parent_run_id)
    except Exception as err:
        return _unreachable(cfg, uri, err)
    if run_config is not None:
        tracker.log_params(run_config)
    logger.info("MLflow tracking on: %s", tracker.describe())
    return tracker


def _start_run(cfg: TrackingConfig, uri: str, parent_run_id: str | None) -> MlflowTracker:
    """Create the experiment if missing and start a run in it (fast-failing when unreachable)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    artifact_root = _artifact_root_for(uri)
    with _fail_fast_http():
        experiment_id = _ensure_experiment(client, cfg.experiment, artifact_root)
    tags = _run_tags(parent_run_id)
    run = client.create_run(experiment_id, tags=tags, run_name=cfg.run_name)
    return MlflowTracker(
        client,
        run.info.run_id,
        experiment_id=experiment_id,
        experiment_name=cfg.experiment,
        tracking_uri=uri,
        artifact_root=str(artifact_root) if artifact_root else None,
        required=cfg.required,
    )


def _ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The id of experiment `name`, created (artifacts under `artifact_root`) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if artifact_root is not None:
        artifact_root.mkdir(parents=True, exist_ok=True)
        location = artifact_root.as_uri()
    logger.info(
        "Creating MLflow experiment '%s' (artifacts: %s)", name, location or "server default"
    )
    return client.create_experiment(name, artifact_location=location)


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


def _run_tags(parent_run_id: str | None) -> dict[str, str]:
    """MLflow's usual context tags (user, source, git commit) plus the parent run tag."""
    tags: dict[str, str] = {}
    try:
        from mlflow.tracking.context.registry import resolve_tags

        tags.update(resolve_tags())
    except Exception as err:  # context tags are nice to have, never worth failing for
        logger.debug("Could not resolve MLflow context tags: %s", err)
    if parent_run_id is not None:
        tags[_PARENT_RUN_TAG] = parent_run_id
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
    an unreachable server. MLflow reads these variables on every request, so setting them for the
    duration of the first call is enough; later calls keep MLflow's resilient defaults.
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


# ----------------------------------------------------------------------------------- params


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a dataclass / nested mapping / sequence into MLflow params with dotted keys.

    `{"trainer": {"lr": 0.1}}` gives `{"trainer.lr": "0.1"}`; a dataclass is read field by
    field; Enums give their value; lists of scalars become one JSON value (`"[64, 32]"`); other
    lists are indexed (`"items.0.name"`). Values longer than MLflow's limit are truncated with
    a `...[truncated]` marker; characters MLflow rejects in keys become `_`.

    Args:
        obj: the value to flatten.
        prefix: key prefix for everything under `obj`.

    Returns:
        Param key -> string value, in the order the fields appear.
    """
    out: dict[str, str] = {}
    _flatten_into(out, obj, prefix)
    return out


def _flatten_into(out: dict[str, str], obj: Any, prefix: str) -> None:
    """Add the params of `obj` (under `prefix`) to `out`."""
    children = _children(obj)
    if children is None:
        out[_param_key(prefix or "value")] = _param_value(_scalar_text(obj))
    elif not children and prefix:
        out[_param_key(prefix)] = "[]" if _is_sequence(obj) else "{}"
    else:
        for key, value in children:
            _flatten_into(out, value, f"{prefix}.{key}" if prefix else str(key))


def _children(obj: Any) -> list[tuple[str, Any]] | None:
    """Named sub-values of a container; None for a leaf (scalar, or list of scalars)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    if _is_sequence(obj):
        items = list(obj)
        if items and all(_is_scalar(v) for v in items):
            return None
        return [(str(i), v) for i, v in enumerate(items)]
    return None


def _is_sequence(obj: Any) -> bool:
    return isinstance(obj, Sequence | set | frozenset) and not isinstance(obj, str | bytes)


def _is_scalar(obj: Any) -> bool:
    return obj is None or isinstance(obj, str | int | float | bool | Enum | Path)


def _scalar_text(obj: Any) -> str:
    """A leaf's text: Enums by value, sequences of scalars as JSON, the rest by `str`."""
    if isinstance(obj, Enum):
        return str(obj.value)
    if _is_sequence(obj):
        return json.dumps(list(obj), default=_json_default)
    return str(obj)


def _param_value(text: str) -> str:
    """`text`, cut to MLflow's param value limit with a marker when too long."""
    if len(text) <= MAX_PARAM_VALUE_LENGTH:
        return text
    return text[: MAX_PARAM_VALUE_LENGTH - len(_TRUNCATION_MARKER)] + _TRUNCATION_MARKER


def _param_key(key: str) -> str:
    """`key` with characters MLflow rejects replaced by `_`."""
    return _BAD_KEY_CHARS.sub("_", key)


def _json_default(obj: Any) -> Any:
    """JSON fallback for Enums, Paths, sets and dataclasses."""
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return str(obj)


# ------------------------------------------------------------------------------------ helpers


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of `items` of at most `size` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _status_for(exc_type: type[BaseException] | None) -> str:
    """Run status for leaving a `with tracker:` block with `exc_type` (None: no exception)."""
    if exc_type is None:
        return "FINISHED"
    if issubclass(exc_type, KeyboardInterrupt):
        return "KILLED"
    return "FAILED"
