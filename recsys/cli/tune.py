"""`make tune`: Hydra's Optuna sweeper (hydra-optuna-sweeper, TPE), with pruning.

`conf/tune/default.yaml` holds the search space and picks the sweeper of
`conf/hydra/sweeper/tune.yaml`: `recsys.cli.tune_sweeper` (Hydra instantiates sweepers only
from the `hydra_plugins` package, so `hydra_plugins/recsys_tune` holds a small class that
hands over to it). What it adds to the stock sweeper, whose search-space parsing and trial
setup it reuses:

- the study lives where every trial can reach it (`storage`, default a SQLite file in the
  sweep folder); each trial's job gets its trial number in its environment
  (`hydra.job.env_set`), reopens it and reports each validation AUC (`TrialPruning`), which is
  what the pruner (`pruner`, default Optuna's MedianPruner) judges;
- a trial stopped by the pruner is told PRUNED (the stock sweeper knows COMPLETE and FAIL);
- the first trial is the composed config's own values of the searched keys (`baseline`), so
  the sweep says what it gained over the defaults; `enqueue` lists more trials to run first;
- a trial without a validation AUC fails with a message saying why: eval never scores it;
- `<sweep dir>/optimization_results.yaml` lists every trial (state, value, MLflow run,
  output folder), which the sweep callback (recsys.cli.sweep) turns into the parent run's
  summary and the best trial's config file.

This module is what the trials' jobs and the sweep callback need; it does not import Optuna.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from recsys.tracking.sweeps import TrialOutcome

if TYPE_CHECKING:
    from recsys.train.tuning import TrialPruning

#: Set by the sweeper for its trials' jobs: the study's storage URL and name, the trial number.
STORAGE_ENV = "RECSYS_TUNE_STORAGE"
STUDY_ENV = "RECSYS_TUNE_STUDY"
TRIAL_ENV = "RECSYS_TUNE_TRIAL"
#: Written by the sweeper in the sweep folder (the stock sweeper's name, more in it).
RESULTS_FILE = "optimization_results.yaml"
#: Optuna user attribute of the trial of the defaults.
BASELINE_ATTR = "recsys.baseline"


class TuneError(RuntimeError):
    """The tuning sweep cannot go on; the message says what to change."""


# ------------------------------------------------------------------- the trial's own job


def trial_pruning() -> TrialPruning | None:
    """In a job launched by the tuning sweeper: the validation hook that reports to its
    trial and stops it when pruned. None in any other run."""
    number, storage = os.environ.get(TRIAL_ENV), os.environ.get(STORAGE_ENV)
    study = os.environ.get(STUDY_ENV)
    if number is None or storage is None or study is None:
        return None
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from optuna.pruners import NopPruner

    from recsys.train.tuning import TrialPruning  # imports torch: only in a trial's job

    spec = HydraConfig.get().sweeper.get("pruner")
    pruner = instantiate(spec) if spec else NopPruner()  # the sweeper's own, rebuilt here
    return TrialPruning(storage, study, int(number), pruner)


# ---------------------------------------------------------------------- after the sweep


@dataclass(frozen=True)
class TuneResults:
    """What the tuning sweeper wrote in `<sweep dir>/optimization_results.yaml`."""

    outcomes: dict[str, TrialOutcome]  # by MLflow run id (tracked trials)
    best_trial: int
    best_value: float
    best_output_dir: Path | None


def read_results(sweep_dir: Path) -> TuneResults | None:
    """The tuning sweeper's results; None after any other sweep (no such file, or the stock
    Optuna sweeper's, which lists no trials)."""
    path = sweep_dir / RESULTS_FILE
    if not path.is_file():
        return None
    results = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(results, dict)
    if "trials" not in results:
        return None
    outcomes = {
        t["mlflow_run_id"]: TrialOutcome(t["number"], t["state"], t["value"], t["baseline"])
        for t in results["trials"]
        if t.get("mlflow_run_id")
    }
    best = next(t for t in results["trials"] if t["number"] == results["best_trial"])
    out = best.get("output_dir")
    return TuneResults(outcomes, best["number"], best["value"], Path(out) if out else None)
