"""A sweep's parent run: after the last trial, the best trial's params, metrics and a plot.

The trials are read back from MLflow (children of the parent run), not from the sweeper: any
launcher (local, joblib, a cluster) leaves them there, and what the parent shows is what the
children recorded.

A trial is judged by its validation AUC (`valid/auc`), never by eval: eval is what the chosen
config is reported on. A trial that logged no validation metrics (it validated on
data.eval_path: no data.valid_path and data.holdout.fraction=0) is skipped and named in the
summary; when none logged them, the sweep has no best trial. Under `make tune` (Optuna) only
trials Optuna saw complete can be best: a pruned trial stopped early, so its config trained
again would not give the model it logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recsys.tracking.mlflow_tracker import MlflowTracker
from recsys.tracking.runs import TRIAL_TAG
from recsys.tracking.tracker import Tracker
from recsys.tracking.urls import run_url, ui_base_url

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: The metric a trial is judged by (higher is better): validation AUC, never eval.
OBJECTIVE = "valid/auc"
#: The parent run's plot of the objective across trials.
PLOT_FILE = "plots/sweep_objective.png"
_MAX_TRIALS = 10_000
_COMPLETE = "COMPLETE"
#: Params that differ between trials whatever was swept.
_NOT_SWEPT = {"output_dir"}


@dataclass(frozen=True)
class Trial:
    """One child run of a sweep, as MLflow holds it."""

    run_id: str
    name: str
    number: int
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrialOutcome:
    """How Optuna ended a trial of `make tune` (recsys.cli.tune), by the trial's MLflow run."""

    number: int  # Optuna's trial number
    state: str  # Optuna's TrialState name: COMPLETE, PRUNED, FAIL
    value: float | None  # what Optuna was told (a pruned trial: its last validation AUC)
    baseline: bool = False  # the trial of the config's own values (the defaults)


@dataclass(frozen=True)
class SweepSummary:
    """What `summarize_sweep` concluded."""

    text: str  # one line, also the parent run's description
    best: Trial | None = None
    best_url: str | None = None  # the best trial's run page in the MLflow UI
    baseline: Trial | None = None  # make tune: the trial of the defaults


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


def select_best(
    trials: list[Trial], outcomes: dict[str, TrialOutcome] | None = None
) -> tuple[Trial | None, dict[str, str]]:
    """The trial with the highest `OBJECTIVE`, among those that logged it and (with Optuna's
    `outcomes`, by run id) completed; and why each other trial could not be best, by name."""
    skipped: dict[str, str] = {}
    candidates = []
    for t in trials:
        outcome = (outcomes or {}).get(t.run_id)
        if OBJECTIVE not in t.metrics:
            skipped[t.name] = f"no {OBJECTIVE} (it validated on eval rows, or failed)"
        elif outcomes is not None and (outcome is None or outcome.state != _COMPLETE):
            skipped[t.name] = f"{outcome.state.lower() if outcome else 'not told'} (Optuna)"
        else:
            candidates.append(t)
    best = max(candidates, key=lambda t: t.metrics[OBJECTIVE], default=None)
    return best, skipped


def summarize_sweep(
    parent: Tracker, outcomes: dict[str, TrialOutcome] | None = None
) -> SweepSummary:
    """Give the parent run the best trial's params and metrics (validation and eval), tags
    with a link to it, and the objective plot; tag each child with its Optuna outcome.

    Args:
        parent: the sweep's parent run.
        outcomes: `make tune`: how Optuna ended each trial, by MLflow run id (only COMPLETE
            trials can be best); None for other sweeps.

    Returns:
        What was concluded; its text (also the parent's description) says why when there is
        no best trial.
    """
    if not isinstance(parent, MlflowTracker):
        return SweepSummary("sweep not tracked")
    try:
        trials = read_trials(parent.tracking_uri, parent.experiment_id, str(parent.run_id))
        if outcomes:
            _tag_outcomes(parent, trials, outcomes)
    except Exception as err:  # a summary is worth a warning, never a failed sweep
        logger.warning("Could not read the sweep's trials from MLflow: %s", err)
        return SweepSummary(f"could not read the trials: {err}")
    best, skipped = select_best(trials, outcomes)
    for name, why in skipped.items():
        logger.info("Sweep: %s cannot be the best trial: %s", name, why)
    if best is None:
        return _no_best(parent, len(trials), skipped)
    url = run_url(ui_base_url(parent.tracking_uri), parent.experiment_id, best.run_id)
    baseline = _baseline(trials, outcomes)
    parent.log_params(best.params)
    parent.log_metrics(best.metrics)
    parent.set_tags(_best_tags(best, len(trials), url, baseline))
    scored = [t for t in trials if OBJECTIVE in t.metrics]
    parent.log_figure(objective_figure(scored, OBJECTIVE, best, outcomes), PLOT_FILE)
    text = (
        f"best of {len(trials)} trials by {OBJECTIVE}: {best.name} "
        f"({OBJECTIVE}={best.metrics[OBJECTIVE]:.4f}{_eval_text(best)}"
        f"{_swept_text(best, trials)}){_baseline_text(baseline)}"
    )
    if skipped:
        text += f"; not eligible: {_skipped_text(skipped)}"
    parent.set_description(f"{text}\nbest trial: {url}")
    return SweepSummary(text, best, url, baseline)


def _no_best(parent: Tracker, n_trials: int, skipped: dict[str, str]) -> SweepSummary:
    text = f"{n_trials} trials, none eligible: no best trial ({_skipped_text(skipped)})"
    if any(OBJECTIVE in why for why in skipped.values()):
        text += (
            f"; without {OBJECTIVE} a trial validated on eval rows: set data.valid_path or "
            "data.holdout.fraction > 0 (eval never picks the best)"
        )
    parent.set_tags({"sweep.trials": str(n_trials)})
    parent.set_description(text)
    return SweepSummary(text)


def _tag_outcomes(parent: MlflowTracker, trials: list[Trial], outcomes: dict) -> None:
    """Each child run gets `tune.state` (COMPLETE / PRUNED / FAIL), `tune.trial`, and
    `tune.baseline` on the trial of the defaults: a pruned run is marked as such in MLflow."""
    from mlflow.entities import RunTag

    for t in trials:
        outcome = outcomes.get(t.run_id)
        if outcome is not None:
            tags = {"tune.state": outcome.state, "tune.trial": str(outcome.number)}
            if outcome.baseline:
                tags["tune.baseline"] = "true"
            parent.client.log_batch(t.run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def _baseline(trials: list[Trial], outcomes: dict[str, TrialOutcome] | None) -> Trial | None:
    marked = {run_id for run_id, o in (outcomes or {}).items() if o.baseline}
    return next((t for t in trials if t.run_id in marked and OBJECTIVE in t.metrics), None)


def _best_tags(best: Trial, n_trials: int, url: str, baseline: Trial | None) -> dict[str, str]:
    tags = {
        "sweep.objective": OBJECTIVE,
        "sweep.best_run_id": best.run_id,
        "sweep.best_run_name": best.name,
        "sweep.best_run_url": url,
        "sweep.best_trial": str(best.number),
        "sweep.best_value": f"{best.metrics[OBJECTIVE]:.6g}",
        "sweep.trials": str(n_trials),
    }
    if baseline is not None:
        tags["sweep.baseline_value"] = f"{baseline.metrics[OBJECTIVE]:.6g}"
    return tags


def _eval_text(trial: Trial) -> str:
    value = trial.metrics.get("eval/auc")
    return "" if value is None else f", eval/auc={value:.4f}"


def _baseline_text(baseline: Trial | None) -> str:
    if baseline is None:
        return ""
    return f"; defaults (trial {baseline.number}): {OBJECTIVE}={baseline.metrics[OBJECTIVE]:.4f}"


def _skipped_text(skipped: dict[str, str]) -> str:
    """`3 pruned (Optuna)`: trials counted by reason, named when a few."""
    names: dict[str, list[str]] = {}
    for name, why in skipped.items():
        names.setdefault(why, []).append(name)
    return ", ".join(
        f"{len(n)} {why}" + (f": {', '.join(n)}" if len(n) <= 3 else "") for why, n in names.items()
    )


def swept_params(trials: list[Trial]) -> list[str]:
    """Param keys whose value differs between trials (what the sweep varied)."""
    keys = sorted({k for t in trials for k in t.params} - _NOT_SWEPT)
    return [k for k in keys if len({t.params.get(k) for t in trials}) > 1]


def _swept_text(best: Trial, trials: list[Trial]) -> str:
    pairs = [f"{k}={_short(best.params.get(k))}" for k in swept_params(trials)]
    return f"; {', '.join(pairs)}" if pairs else ""


def objective_figure(
    trials: list[Trial],
    objective: str,
    best: Trial,
    outcomes: dict[str, TrialOutcome] | None = None,
) -> Figure:
    """The objective of every trial (x: trial, labelled with its swept values), best starred;
    trials Optuna pruned are crossed (their value is the last validation before the stop)."""
    from matplotlib.figure import Figure

    keys = swept_params(trials)
    fig = Figure(figsize=(max(6.0, 0.9 * len(trials)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(len(trials)))
    ys = [t.metrics[objective] for t in trials]
    ax.plot(xs, ys, marker="o", linestyle="-", color="tab:blue", label=objective)
    pruned = [i for i, t in enumerate(trials) if _state(t, outcomes) == "PRUNED"]
    if pruned:
        ax.plot([xs[i] for i in pruned], [ys[i] for i in pruned], marker="x", markersize=10,
                linestyle="none", color="tab:gray", label="pruned")  # fmt: skip
    i_best = trials.index(best)
    ax.plot([i_best], [ys[i_best]], marker="*", markersize=16, color="tab:red", label="best")
    ax.set_xticks(xs, [_tick(t, keys) for t in trials], fontsize=8)
    ax.set_xlabel("trial" + (f" ({', '.join(keys)})" if keys else ""))
    ax.set_ylabel(objective)
    ax.set_title(f"Sweep: {objective} per trial (best: trial {best.number})")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _state(trial: Trial, outcomes: dict[str, TrialOutcome] | None) -> str | None:
    outcome = (outcomes or {}).get(trial.run_id)
    return outcome.state if outcome else None


def _tick(trial: Trial, keys: list[str]) -> str:
    values = "\n".join(_short(trial.params.get(k)) for k in keys[:3])
    return f"t{trial.number}" + (f"\n{values}" if values else "")


def _short(value: str | None) -> str:
    """A param as a tick label: floats to 3 significant digits (Optuna's draws are long)."""
    try:
        number = float(str(value))
    except ValueError:
        return str(value)
    return str(value) if number.is_integer() else f"{number:.3g}"
