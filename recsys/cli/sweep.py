"""Hydra multirun -> one MLflow parent run, with every trial nested under it as a child run.

At the end the parent carries the best trial by validation AUC (never eval): its params, its
validation and eval metrics, a link to its run, and a plot of the objective across trials
(`recsys.tracking.sweeps`); the best trial's overrides are written as
`<sweep dir>/experiment/best.yaml` (`recsys.cli.best_config`), logged to the parent, and the
command that trains it is printed. After `make tune` only trials Optuna saw complete can be
best (`recsys.cli.tune`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from recsys.cli.best_config import BestConfig, write_best_config
from recsys.cli.tune import TuneResults, read_results
from recsys.config import TrackingConfig
from recsys.tracking import NullTracker, Tracker, open_tracker, run_name
from recsys.tracking.runs import SWEEP_TRIAL_ENV
from recsys.tracking.sweeps import OBJECTIVE, SweepSummary, summarize_sweep

logger = logging.getLogger(__name__)

# Trials run after on_multirun_start, possibly in other processes (launcher plugins): the
# parent run id travels in the environment, which every launcher passes on.
PARENT_RUN_ENV = "RECSYS_PARENT_RUN_ID"


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent: Tracker = NullTracker("no sweep")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = OmegaConf.to_object(config.tracking)
        assert isinstance(tracking, TrackingConfig)
        sweep_dir = config.hydra.sweep.dir
        model, data = config.model.get("name"), config.data.get("name")
        tracking.run_name = tracking.run_name or f"sweep-{run_name(_str(model), _str(data))}"
        self.parent = open_tracker(tracking, run_config=None)
        if self.parent.run_id:
            os.environ[PARENT_RUN_ENV] = self.parent.run_id
            self.parent.set_tags(
                {
                    "recsys.sweep_dir": str(sweep_dir),
                    "recsys.sweep_params": str(config.hydra.sweeper.params),
                }
            )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Runs in the trial's own process, before the task: the trial's run name reads it.
        if config.hydra.mode == RunMode.MULTIRUN:
            os.environ[SWEEP_TRIAL_ENV] = str(config.hydra.job.num)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(SWEEP_TRIAL_ENV, None)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        tuned = read_results(sweep_dir)  # make tune: how Optuna ended each trial
        summary = summarize_sweep(self.parent, tuned.outcomes if tuned else None)
        logger.info("Sweep: %s", summary.text)
        best = _save_best(summary, tuned, sweep_dir)
        if best is not None:
            self.parent.log_artifact(best.path)
        self.parent.finish()  # logs the parent run's link
        print(_report(summary, tuned, best))  # the sweep's own summary, as a run prints its own


def _save_best(
    summary: SweepSummary, tuned: TuneResults | None, sweep_dir: Path
) -> BestConfig | None:
    """The best trial's config file: Optuna's best after `make tune` (the parent's best, read
    from MLflow, is the same trial), else the parent's."""
    best = summary.best
    if tuned is not None:
        trial_dir, number, value = tuned.best_output_dir, tuned.best_trial, tuned.best_value
    elif best is not None:
        trial_dir = Path(best.params.get("output_dir") or sweep_dir / str(best.number))
        number, value = best.number, best.metrics[OBJECTIVE]
    else:
        return None
    if trial_dir is None or not (trial_dir / ".hydra" / "overrides.yaml").is_file():
        logger.warning("Sweep: the best trial's overrides are not in %s: no best.yaml", trial_dir)
        return None
    header = f"Best trial {number} of the sweep in {sweep_dir}: {OBJECTIVE} {value:.6f}"
    if best is not None and tuned is not None and tuned.outcomes[best.run_id].number != number:
        logger.warning("Sweep: MLflow's best run is not Optuna's best trial %d", number)
    elif summary.best_url is not None:
        header += f"\nIts MLflow run: {summary.best_url}"
    return write_best_config(trial_dir, sweep_dir, header)


def _report(summary: SweepSummary, tuned: TuneResults | None, best: BestConfig | None) -> str:
    lines = ["", "== recsys sweep finished ==", f"  {summary.text}"]
    if summary.best_url:
        lines.append(f"  best run    {summary.best_url}")
    if tuned is not None and summary.best is None:
        lines.append(f"  best trial  {tuned.best_trial} ({OBJECTIVE} {tuned.best_value:.4f})")
    if best is not None:
        lines += [
            f"  best config {best.path}",
            f"  train it    {best.command()}",
        ]
    return "\n".join(lines)


def parent_run_id() -> str | None:
    return os.environ.get(PARENT_RUN_ENV)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
