"""`hydra/sweeper=tune` (recsys/conf/hydra/sweeper/tune.yaml).

Hydra instantiates sweepers only from the `hydra_plugins` package; this class hands over to
recsys.cli.tune_sweeper, imported when a tuning sweep starts (it imports Optuna), not each
time Hydra scans its plugins.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class RecsysTuneSweeper(Sweeper):
    def __init__(self, **config: Any) -> None:
        from recsys.cli.tune_sweeper import TuneSweeperImpl

        self.sweeper = TuneSweeperImpl(**config)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
