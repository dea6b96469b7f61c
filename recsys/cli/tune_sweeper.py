"""The sweeper of `make tune`: hydra-optuna-sweeper's, with pruning (see recsys.cli.tune).

Imported only when a tuning sweep starts (by `hydra_plugins/recsys_tune`): it imports Optuna.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from recsys.cli.tune import (
    BASELINE_ATTR,
    RESULTS_FILE,
    STORAGE_ENV,
    STUDY_ENV,
    TRIAL_ENV,
    TuneError,
)
from recsys.train.tuning import NO_VALIDATION, OBJECTIVE, PRUNED_ATTR, RUN_ID_ATTR

log = logging.getLogger(__name__)

Space = dict[str, BaseDistribution]


class TuneSweeperImpl(OptunaSweeperImpl):
    """hydra-optuna-sweeper's sweeper with a study the trials reach, PRUNED trials, a first
    trial of the defaults, and a results file that lists every trial.

    Args:
        pruner: an Optuna pruner (`hydra.sweeper.pruner`, instantiated by Hydra); None: none.
        baseline: run the composed config's own values of the searched keys first.
        enqueue: more trials to run first, each a {key: value} of searched keys.
        **optuna_sweeper: the stock sweeper's settings (sampler, direction, storage,
            study_name, n_trials, n_jobs, max_failure_rate, search_space, params, ...).
    """

    def __init__(
        self,
        *,
        pruner: optuna.pruners.BasePruner | None = None,
        baseline: bool = True,
        enqueue: Sequence[Mapping[str, Any]] | None = None,
        **optuna_sweeper: Any,
    ) -> None:
        super().__init__(**optuna_sweeper)
        self.pruner = pruner or optuna.pruners.NopPruner()
        self.baseline = baseline
        self.enqueue = [dict(e) for e in enqueue or []]
        self.output_dirs: dict[int, str | None] = {}

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = self._space(arguments)
        _check_tunable(self.config, self._get_directions(), self.sampler)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)  # the SQLite file goes there
        storage = self.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
        _init_storage(storage)
        study = optuna.create_study(
            study_name=self.study_name, storage=storage, sampler=self.sampler,
            pruner=self.pruner, direction="maximize", load_if_exists=True,
        )  # fmt: skip
        log.info("Tuning %s over %s: %d trials, study '%s' in %s", OBJECTIVE, sorted(space),
                 self.n_trials, study.study_name, storage)  # fmt: skip
        self._enqueue_first(study, space)
        os.environ[STORAGE_ENV], os.environ[STUDY_ENV] = storage, study.study_name
        try:
            for start in range(0, self.n_trials, self.n_jobs):
                size = min(self.n_jobs, self.n_trials - start)
                self._run_batch(storage, study.study_name, size, space, fixed)
        finally:
            os.environ.pop(STORAGE_ENV, None)
            os.environ.pop(STUDY_ENV, None)
        self._write_results(self._load(storage, study.study_name), sweep_dir)

    def _space(self, arguments: list[str]) -> tuple[Space, dict[str, Any]]:
        """The searched keys (`hydra.sweeper.params`, then the command line's sweeps) and the
        fixed overrides; a key the command line fixes is not searched."""
        self._process_searchspace_config()
        params = self._parse_sweeper_params_config() + list(arguments)
        space, fixed = create_params_from_overrides(params)
        space = {**(self.search_space_distributions or {}), **space}
        return {k: d for k, d in space.items() if k not in fixed}, fixed

    def _run_batch(self, storage: str, name: str, size: int, space: Space, fixed: dict) -> None:
        """Ask for `size` trials, run them as Hydra jobs, tell Optuna how each ended. The study
        is reopened for each step: Optuna caches the trials it creates, and the jobs wrote to
        them (intermediate values, attributes) through their own connection."""
        trials = [self._load(storage, name).ask() for _ in range(size)]
        overrides = [
            (*o, f"++hydra.job.env_set.{TRIAL_ENV}={t.number}")
            for o, t in zip(self._configure_trials(trials, space, fixed), trials, strict=True)
        ]
        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        study = self._load(storage, name)
        failures = []
        for trial, ret in zip(trials, returns, strict=True):
            state, value, error = _outcome(study.trials[trial.number], ret)
            study.tell(trial.number, [value] if state == TrialState.COMPLETE else None, state)
            self.output_dirs[trial.number] = _output_dir(ret)
            if error is None:
                log.info("Trial %d %s: %s %.4f", trial.number, state.name, OBJECTIVE, value)
            else:
                log.warning("Trial %d failed: %s", trial.number, error)
                failures.append(error)
        if failures and len(failures) / len(returns) > self.max_failure_rate:
            for ret in returns:
                _ = ret.return_value  # a failed job's own exception, with its traceback
            raise failures[0]

    def _load(self, storage: str, name: str) -> optuna.Study:
        return optuna.load_study(
            study_name=name, storage=storage, sampler=self.sampler, pruner=self.pruner
        )

    def _enqueue_first(self, study: optuna.Study, space: Space) -> None:
        """A new study starts with the defaults (`baseline`), then the `enqueue` trials."""
        if study.trials:
            return  # a study resumed from `storage`: it has its own history
        first = [(_defaults(space, self.config), True)] if self.baseline else []
        first += [(_checked(params, space), False) for params in self.enqueue]
        for params, is_baseline in first:
            _add_waiting(study, params, {BASELINE_ATTR: True} if is_baseline else {})

    def _write_results(self, study: optuna.Study, sweep_dir: Path) -> None:
        """`<sweep dir>/optimization_results.yaml`: the best trial and every trial."""
        if not any(t.state == TrialState.COMPLETE for t in study.trials):
            raise TuneError(f"no trial completed: see the trials' logs under {sweep_dir}")
        best = study.best_trial
        results = {
            "name": "optuna",
            "objective": OBJECTIVE,
            "best_params": best.params,
            "best_value": best.value,
            "best_trial": best.number,
            "study_name": study.study_name,
            "trials": [_record(t, self.output_dirs.get(t.number)) for t in study.trials],
        }
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        log.info("Best trial %d: %s %.4f, %s", best.number, OBJECTIVE, best.value, best.params)


def _check_tunable(config: DictConfig, directions: list[str], sampler: Any) -> None:
    """Before the first trial: the objective is validation AUC, so the runs must have
    validation rows, and the direction is up."""
    data = config.data
    if data.get("valid_path") is None and float(data.holdout.fraction) <= 0:
        raise TuneError(NO_VALIDATION)
    if [str(d).rsplit(".", 1)[-1] for d in directions] != ["maximize"]:
        raise TuneError(f"hydra.sweeper.direction must be maximize ({OBJECTIVE}): {directions}")
    if isinstance(sampler, functools.partial):
        raise TuneError("make tune takes no grid sampler: `make sweep` runs grids")


def _init_storage(url: str) -> None:
    """Create the study tables of an RDB storage with autocommit, once. Optuna 2.10 (what
    hydra-optuna-sweeper 1.3 allows) stamps its schema version without a commit, which
    SQLAlchemy 2 rolls back, and every later open fails (`assert version is not None`)."""
    if not url.startswith("redis"):
        optuna.storages.RDBStorage(url, engine_kwargs={"isolation_level": "AUTOCOMMIT"})


def _outcome(trial: FrozenTrial, ret: JobReturn) -> tuple[TrialState, float, Exception | None]:
    """How a trial ended: COMPLETE with its value, PRUNED (its job stopped on the pruner's
    word), or FAIL with why (the job raised, or logged no validation AUC)."""
    try:
        value = float(ret.return_value)  # raises the job's own exception when it failed
    except Exception as err:
        return TrialState.FAIL, math.nan, err
    if math.isnan(value):
        return TrialState.FAIL, value, TuneError(f"trial {trial.number}: {NO_VALIDATION}")
    if PRUNED_ATTR in trial.user_attrs:
        return TrialState.PRUNED, value, None
    return TrialState.COMPLETE, value, None


def _output_dir(ret: JobReturn) -> str | None:
    return None if ret.hydra_cfg is None else str(ret.hydra_cfg.hydra.runtime.output_dir)


def _defaults(space: Space, config: DictConfig) -> dict[str, Any]:
    """The composed config's value of each searched key (for a config group: the chosen
    option) where it lies in the searched range; the others are sampled."""
    choices = config.hydra.runtime.choices
    values = {}
    for name, distribution in space.items():
        value = choices.get(name) if name in choices else OmegaConf.select(config, name)
        value = value.value if isinstance(value, Enum) else value
        if value is not None and _contains(distribution, value):
            values[name] = value
        else:
            log.info("Baseline trial: %s=%s is outside the searched range: sampled", name, value)
    return values


def _checked(params: dict[str, Any], space: Space) -> dict[str, Any]:
    for name, value in params.items():
        if name not in space:
            raise TuneError(f"hydra.sweeper.enqueue names {name}, which is not searched")
        if not _contains(space[name], value):
            raise TuneError(f"hydra.sweeper.enqueue: {name}={value} is outside its range")
    return params


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def _add_waiting(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    """`study.enqueue_trial(params)`, with user attributes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        trial = optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs={"fixed_params": params}, user_attrs=user_attrs
        )
        study.add_trial(trial)


def _record(trial: FrozenTrial, output_dir: str | None) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "baseline": bool(trial.user_attrs.get(BASELINE_ATTR, False)),
        "pruned_at_validation": trial.user_attrs.get(PRUNED_ATTR),
        "mlflow_run_id": trial.user_attrs.get(RUN_ID_ATTR),
        "output_dir": output_dir,
    }
