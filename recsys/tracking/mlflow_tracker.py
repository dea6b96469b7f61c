"""`MlflowTracker`: the `Tracker` that logs into one MLflow run.

`open_tracker` (`recsys.tracking.runs`) returns one when tracking is on and this is rank 0, and
a `NullTracker` otherwise; the interface both share, and `TrackingError`, are in
`recsys.tracking.tracker`. Params flattening is in `recsys.tracking.params`; dataset inputs in
`recsys.tracking.datasets`; UI links in `recsys.tracking.urls`; background delivery in
`recsys.tracking.sender`.

`mlflow` takes seconds to import, so it is imported lazily: `import recsys.tracking` is cheap
and a `NullTracker` never imports it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.tracking.datasets import dataset_input
from recsys.tracking.params import flatten_params, json_default
from recsys.tracking.tracker import Tracker, TrackingError
from recsys.tracking.urls import run_url, ui_base_url, ui_command

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

__all__ = ["MlflowTracker"]

#: MLflow's limit on params (and tags) per `log_batch` call (MAX_PARAMS_TAGS_PER_BATCH).
MAX_PARAMS_PER_BATCH = 100
#: MLflow's limit on metrics per `log_batch` call (MAX_METRICS_PER_BATCH).
MAX_METRICS_PER_BATCH = 1000

#: The run tag MLflow's UI shows as the run's description.
DESCRIPTION_TAG = "mlflow.note.content"

_TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")


class MlflowTracker(Tracker):
    """One MLflow run, driven through `MlflowClient` (no global active-run state).

    Every MLflow call is queued and sent in order by a background sender
    (`recsys.tracking.sender`), which retries with backoff while the server is away: training
    only enqueues. `finish` flushes with a deadline (`tracking.flush_timeout_s`) and says what,
    if anything, never reached MLflow; with `required` that is a `TrackingError`.
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
        flush_timeout_s: float = 60.0,
    ) -> None:
        """Wrap an already created, active run; start the thread that sends its calls.

        Args:
            client: client bound to `tracking_uri`.
            run_id: the run to log into.
            experiment_id: id of the run's experiment (for UI links).
            experiment_name: name of the run's experiment (for messages).
            tracking_uri: where the run is stored.
            artifact_root: the experiment's artifact location (for the `mlflow ui` hint).
            required: raise `TrackingError` when MLflow refuses a call, or when `finish` cannot
                deliver everything, instead of warning.
            flush_timeout_s: how long `finish` waits for queued calls (tracking.flush_timeout_s).
        """
        from recsys.tracking.sender import Sender, is_transient_mlflow_error, use_fail_fast_http

        self._client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.required = required
        self.flush_timeout_s = flush_timeout_s
        #: What reached MLflow, set by `finish` (a `recsys.tracking.sender.SendReport`).
        self.delivery: Any = None
        self._finished = False
        # Every call goes through the sender thread, which retries with its own backoff, so
        # MLflow's in-call retries (minutes) are switched off for this process.
        use_fail_fast_http()
        self._sender = Sender(tracking_uri, is_transient=is_transient_mlflow_error)
        self._system_metrics: Any = None  # mlflow's SystemMetricsMonitor while it runs

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
        clean = json.loads(json.dumps(d, default=json_default))
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

    def set_description(self, text: str) -> None:
        """Store `text` as the run description (the `mlflow.note.content` tag)."""
        self._call("set description", self._client.set_tag, self.run_id, DESCRIPTION_TAG, text)

    def log_dataset(
        self,
        context: str,
        name: str,
        source: str,
        digest: str,
        schema: Mapping[str, str],
        rows: int | None,
    ) -> None:
        """Log a dataset input with the `mlflow.data.context` tag `context`."""
        item = dataset_input(context, name, source, digest, schema, rows)
        self._call("log dataset", self._client.log_inputs, self.run_id, datasets=[item])

    def start_system_metrics(self) -> None:
        """Sample CPU, memory, disk and network into `system/...` metrics until `finish`.

        MLflow's monitor logs from its own thread with its own client, so a slow tracking
        server never stalls training through it. Failing to start it only costs a warning.
        """
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, tracking_uri=self.tracking_uri)
            monitor.start()
        except Exception as err:  # psutil missing, odd platform: the run itself matters more
            logger.warning("MLflow system metrics are off for run %s: %s", self.run_id, err)
            return
        self._system_metrics = monitor

    def finish(self, status: str = "FINISHED") -> None:
        """Deliver every queued call, then mark the run `status`; only the first call acts.

        Waits up to `flush_timeout_s` (a server that is away may come back meanwhile). The run
        is marked terminated only after all calls before it were sent, so a run the server
        still shows RUNNING lacks data. What was not delivered is counted in `self.delivery`,
        named in a warning, tagged on the run when it can be, and raised when `required`.
        The sender thread is always stopped and joined here (also on Ctrl-C).
        """
        if self._finished:
            return
        if status not in _TERMINAL_STATUSES:
            raise ValueError(f"status={status!r}: expected one of {_TERMINAL_STATUSES}")
        self._finished = True
        self._stop_system_metrics()
        sender, client, run_id = self._sender, self._client, self.run_id

        def terminate() -> None:  # runs on the sender thread, after every earlier call
            if not (so_far := sender.report()).complete:
                client.set_tag(run_id, "recsys.tracking_lost", so_far.summary())
            client.set_terminated(run_id, status)

        sender.submit("finish run", terminate)
        try:
            self.delivery = sender.close(self.flush_timeout_s)
        except KeyboardInterrupt:  # a second Ctrl-C cut the flush short: still say what is lost
            self.delivery = sender.report()
            logger.warning("MLflow run %s: flush interrupted; %s.", run_id, self.delivery.summary())
            raise
        if self.delivery.complete:
            logger.info("MLflow run %s ended %s. %s", run_id, status, self.describe())
            return
        message = (
            f"MLflow run {run_id} at {self.tracking_uri} is INCOMPLETE: "
            f"{self.delivery.summary()} (first: {self.delivery.first_error}); the status "
            f"{status} is recorded only when delivered. If the server was away, it did not "
            f"come back within tracking.flush_timeout_s={self.flush_timeout_s:g}: raise it, "
            "or check the server."
        )
        if self.required and status == "FINISHED":
            raise TrackingError(message + " (tracking.required=true)")
        logger.warning(message)

    def describe(self) -> str:
        """Where the run is and the link that opens it in the MLflow UI's training view."""
        where = f"MLflow run {self.run_id} in experiment '{self.experiment_name}'"
        if self.delivery is not None and not self.delivery.complete:
            where += f" (INCOMPLETE in MLflow: {self.delivery.summary()})"
        url = self.url()
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{where}: open {url}"
        serve = ui_command(self.tracking_uri, self.artifact_root)
        return f"{where} (store {self.tracking_uri}); view it with `{serve}` and open {url}"

    def url(self) -> str:
        """The run page in the MLflow UI (model-training view)."""
        return run_url(ui_base_url(self.tracking_uri), self.experiment_id, str(self.run_id))

    @property
    def client(self) -> MlflowClient:
        """The run's MLflow client, for calls that need an answer now (the model registry,
        `recsys.tracking.model`); call `wait_sent` first so the run holds what was queued."""
        return self._client

    def wait_sent(self, timeout_s: float | None = None) -> bool:
        """Wait until every call queued so far was delivered, refused or lost.

        Returns:
            False when that took longer than `timeout_s` (default `flush_timeout_s`).
        """
        import concurrent.futures

        barrier = self._sender.submit("wait for queued calls", lambda: None)
        try:
            barrier.result(timeout=self.flush_timeout_s if timeout_s is None else timeout_s)
        except concurrent.futures.TimeoutError:
            return False
        except Exception:  # the barrier itself was lost (sender closed): nothing is queued
            pass
        return True

    def _stop_system_metrics(self) -> None:
        """Stop the system metrics thread (it flushes its last sample) before the run ends."""
        monitor, self._system_metrics = self._system_metrics, None
        if monitor is None:
            return
        try:
            monitor.finish()
        except Exception as err:
            logger.warning("Stopping MLflow system metrics for run %s: %s", self.run_id, err)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Queue one MLflow call for the sender thread and return at once (never blocks).

        Calls reach MLflow in the order made; while the server is away they wait in memory and
        are retried with backoff (see `recsys.tracking.sender`). The arguments are used when
        the call is sent, not now: pass values that do not change later (files stay in place).

        Returns:
            A `concurrent.futures.Future` of the call's result, for a caller that needs it.

        Raises:
            TrackingError: `required` and MLflow refused an earlier call (a bad value, a
                deleted run), or the run was already finished.
        """
        refused = self._sender.refused
        if self.required and (refused is not None or self._finished):
            why = f"refused an earlier call: {refused}" if refused else "the run is finished"
            raise TrackingError(
                f"MLflow call '{what}' for run {self.run_id} at {self.tracking_uri}: MLflow "
                f"{why}. Check the run and the server, or set tracking.required=false to let "
                "training go on with a warning."
            )
        items = sum(len(kwargs.get(k) or ()) for k in ("metrics", "params", "tags")) or 1
        return self._sender.submit(what, lambda: fn(*args, **kwargs), items)


# ------------------------------------------------------------------------------------ helpers


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of `items` of at most `size` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
