"""A sweep's parent run: after the last trial, the best trial's params, metrics and a plot.

The trials are read back from MLflow (children of the parent run), not from the sweeper: any
launcher (local, joblib, a cluster) leaves them there, and what the parent shows is what the
children recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recsys.tracking.mlflow_tracker import MlflowTracker, Tracker
from recsys.tracking.runs import TRIAL_TAG

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: Metrics a trial is judged by, first present wins (higher is better).
OBJECTIVES = ("valid/auc", "eval/auc")
#: The parent run's plot of the objective across trials.
PLOT_FILE = "plots/sweep_objective.png"
_MAX_TRIALS = 10_000


@dataclass(frozen=True)
class Trial:
    """One child run of a sweep, as MLflow holds it."""

    run_id: str
    name: str
    number: int
    params: dict[str, str]
    metrics: dict[str, float]


def read_trials(tracking_uri: str, experiment_id: str, parent_run_id: str) -> list[Trial]:
    """The child runs of `parent_run_id`, by trial number (then start time)."""
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri).search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=_MAX_TRIALS,
        order_by=["attributes.start_time ASC"],
    )
    trials = [
        Trial(
            run_id=r.info.run_id,
            name=r.info.run_name or r.info.run_id,
            number=int(r.data.tags.get(TRIAL_TAG, i)),
            params=dict(r.data.params),
            metrics={k: v for k, v in r.data.metrics.items() if not k.startswith("system/")},
        )
        for i, r in enumerate(runs)
    ]
    return sorted(trials, key=lambda t: t.number)


def pick_objective(trials: list[Trial]) -> str | None:
    """The first of `OBJECTIVES` that some trial logged; None when none did."""
    return next((m for m in OBJECTIVES if any(m in t.metrics for t in trials)), None)


def summarize_sweep(parent: Tracker) -> str:
    """Give the parent run the best trial's params and metrics, tags and the objective plot.

    Returns:
        A one-line summary (also the parent's description); says why when there is no best.
    """
    if not isinstance(parent, MlflowTracker):
        return "sweep not tracked"
    try:
        trials = read_trials(parent.tracking_uri, parent.experiment_id, str(parent.run_id))
    except Exception as err:  # a summary is worth a warning, never a failed sweep
        logger.warning("Could not read the sweep's trials from MLflow: %s", err)
        return f"could not read the trials: {err}"
    objective = pick_objective(trials)
    if objective is None:
        summary = f"{len(trials)} trials, none logged {' or '.join(OBJECTIVES)}: no best trial"
        parent.set_tags({"sweep.trials": str(len(trials))})
        parent.set_description(summary)
        return summary
    scored = [t for t in trials if objective in t.metrics]
    best = max(scored, key=lambda t: t.metrics[objective])
    parent.log_params(best.params)
    parent.log_metrics(best.metrics)
    parent.set_tags(_best_tags(best, objective, len(trials)))
    parent.log_figure(objective_figure(scored, objective, best), PLOT_FILE)
    summary = (
        f"best of {len(trials)} trials by {objective}: {best.name} "
        f"({objective}={best.metrics[objective]:.4f}{_swept_text(best, trials)})"
    )
    parent.set_description(summary)
    return summary


def _best_tags(best: Trial, objective: str, n_trials: int) -> dict[str, str]:
    return {
        "sweep.objective": objective,
        "sweep.best_run_id": best.run_id,
        "sweep.best_run_name": best.name,
        "sweep.best_trial": str(best.number),
        "sweep.best_value": f"{best.metrics[objective]:.6g}",
        "sweep.trials": str(n_trials),
    }


def swept_params(trials: list[Trial]) -> list[str]:
    """Param keys whose value differs between trials (what the sweep varied)."""
    keys = sorted({k for t in trials for k in t.params})
    return [k for k in keys if len({t.params.get(k) for t in trials}) > 1]


def _swept_text(best: Trial, trials: list[Trial]) -> str:
    pairs = [f"{k}={best.params.get(k)}" for k in swept_params(trials)]
    return f"; {', '.join(pairs)}" if pairs else ""


def objective_figure(trials: list[Trial], objective: str, best: Trial) -> Figure:
    """The objective of every trial (x: trial, labelled with its swept values), best starred."""
    from matplotlib.figure import Figure

    keys = swept_params(trials)
    fig = Figure(figsize=(max(6.0, 0.9 * len(trials)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(len(trials)))
    ys = [t.metrics[objective] for t in trials]
    ax.plot(xs, ys, marker="o", linestyle="-", color="tab:blue", label=objective)
    i_best = trials.index(best)
    ax.plot([i_best], [ys[i_best]], marker="*", markersize=16, color="tab:red", label="best")
    ax.set_xticks(xs, [_tick(t, keys) for t in trials], fontsize=8)
    ax.set_xlabel("trial" + (f" ({', '.join(keys)})" if keys else ""))
    ax.set_ylabel(objective)
    ax.set_title(f"Sweep: {objective} per trial (best: trial {best.number})")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _tick(trial: Trial, keys: list[str]) -> str:
    values = "\n".join(str(trial.params.get(k)) for k in keys[:3])
    return f"t{trial.number}" + (f"\n{values}" if values else "")
