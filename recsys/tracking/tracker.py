"""What training code logs through: the `Tracker` interface, its no-op `NullTracker`, and
`TrackingError`.

They live apart from `recsys.tracking.mlflow_tracker` (the one implementation that talks to
MLflow) because they are what the rest of the code base sees: `open_tracker`
(`recsys.tracking.runs`) hands back either kind, so the training loop never branches on whether
tracking is on, and importing this module never imports `mlflow`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["NullTracker", "Tracker", "TrackingError"]


class TrackingError(RuntimeError):
    """MLflow could not be reached (or refused a call) and `tracking.required=true`."""


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

    def set_description(self, text: str) -> None:
        """Set the run's description (markdown; shown on the run page), e.g. its summary."""

    def log_dataset(
        self,
        context: str,
        name: str,
        source: str,
        digest: str,
        schema: Mapping[str, str],
        rows: int | None,
    ) -> None:
        """Record a dataset input (see `recsys.tracking.datasets.dataset_input` for the args)."""

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


def _status_for(exc_type: type[BaseException] | None) -> str:
    """Run status for leaving a `with tracker:` block with `exc_type` (None: no exception)."""
    if exc_type is None:
        return "FINISHED"
    if issubclass(exc_type, KeyboardInterrupt):
        return "KILLED"
    return "FAILED"
