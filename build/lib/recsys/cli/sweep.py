"""Hydra multirun -> one MLflow parent run, with every trial nested under it as a child run."""

from __future__ import annotations

import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recsys.config import TrackingConfig
from recsys.tracking import NullTracker, Tracker, open_tracker

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
        tracking.run_name = tracking.run_name or f"sweep {sweep_dir}"
        self.parent = open_tracker(tracking, run_config=None)
        if self.parent.run_id:
            os.environ[PARENT_RUN_ENV] = self.parent.run_id
            self.parent.set_tags(
                {
                    "recsys.sweep_dir": str(sweep_dir),
                    "recsys.sweep_params": str(config.hydra.sweeper.params),
                }
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(PARENT_RUN_ENV, None)
        self.parent.finish()


def parent_run_id() -> str | None:
    return os.environ.get(PARENT_RUN_ENV)
