"""`recsys-train [hydra overrides]`: a thin Hydra entry point around `recsys.train.recipe.run`.

Before Hydra makes its run folder, a single run composes the same config and validates it: a
bad key or value exits 2 with one line naming it and the valid ones (no traceback, no
outputs/ folder, no MLflow run). In a --multirun each job's `run(cfg)` validates its own.
"""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from recsys.cli.overrides import check_overrides, single_run_args
from recsys.cli.sweep import parent_run_id
from recsys.cli.tune import trial_pruning
from recsys.compose import conf_dir, explain, load_config, to_train_config
from recsys.config import ConfigError, register_configs

log = logging.getLogger("recsys")


def main() -> None:
    _quiet_third_party()
    register_configs()
    problem = check_overrides(sys.argv[1:]) or config_problem(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


def config_problem(argv: list[str]) -> str | None:
    """What is wrong with the config these arguments compose, or None (also for a --multirun,
    --help, --cfg and the like, which start no single run)."""
    args = single_run_args(argv)
    if args is None:
        return None
    try:
        config = load_config(args.overrides, config_dir=args.config_dir, config_name=args.name)
        from recsys.train.validate import validate  # imports torch: after composition errors

        validate(config)
    except (ConfigError, OmegaConfBaseException, HydraException) as e:
        return explain(e)
    return None


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    config = to_train_config(cfg)
    config.output_dir = HydraConfig.get().runtime.output_dir
    config.tracking.parent_run_id = config.tracking.parent_run_id or parent_run_id()
    from recsys.data.featurize import DataError
    from recsys.distributed.env import launch_rank
    from recsys.tracking import TrackingError
    from recsys.train.recipe import run  # heavy imports (torchrec) after config errors surface
    from recsys.train.tuning import validation_auc

    trial = trial_pruning()  # None unless make tune's sweeper launched this job
    try:
        result = run(config, on_validation=trial)
    except (ConfigError, DataError, TrackingError) as e:
        # The user can act on these: say what is wrong without a traceback.
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    if launch_rank() == 0:
        print(result.summary())
        if trial is not None:
            trial.finish(result.run_id)
    # What a sweeper optimizes: the final model's validation AUC (NaN without validation
    # rows), never eval's.
    return validation_auc(result)


def _quiet_third_party() -> None:
    """Keep the console for the run's own progress: torchrec and torch repeat deprecation
    notices on every rank that say nothing about the run."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec(\..*)?")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recsys\.distributed\..*")
    warnings.filterwarnings("ignore", message=r".*an autograd kernel was not registered.*")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


if __name__ == "__main__":
    main()
