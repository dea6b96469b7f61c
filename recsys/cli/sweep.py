"""Hydra multirun -> one MLflow parent run, with every trial nested under it as a child run.

At the end the parent carries the best trial's params and metrics, tags saying which trial and
which objective, and a plot of the objective across trials (`recsys.tracking.sweeps`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from recsys.config import TrackingConfig
from recsys.tracking import NullTracker, Tracker, open_tracker, run_name
from recsys.tracking.runs import SWEEP_TRIAL_ENV
from recsys.tracking.sweeps import summarize_sweep

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
        logger.info("Sweep: %s", summarize_sweep(self.parent))
        self.parent.finish()  # logs the parent run's link


def parent_run_id() -> str | None:
    return os.environ.get(PARENT_RUN_ENV)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
