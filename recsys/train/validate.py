"""`validate(cfg)`: the whole config checked once, before anything happens.

Hydra already rejects unknown keys, wrong types and invalid choices at composition (every
choice is a StrEnum); this adds what a single field cannot say: ranges, combinations, the
machine (CUDA visible?), the feature schema and the model head it implies. It is pure: no
model tables, no process group, no MLflow run, no folder. The CLI runs it before Hydra makes
its run folder, and `recsys.train.recipe.run` as its first step, so a typo never leaves a
failed MLflow run behind. Every error is a `ConfigError` naming the key, the value and what
to do.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import StrEnum
from pathlib import Path
from typing import Any

from recsys.config import (
    CheckpointConfig,
    ConfigError,
    Device,
    EarlyStoppingConfig,
    HoldoutConfig,
    LRScheduleConfig,
    ModelConfig,
    SparseOptimizer,
    TrainConfig,
    TrainerConfig,
)
from recsys.model.registry import head_config
from recsys.schema import Schema, resolve_schema


def validate(cfg: TrainConfig) -> Schema:
    """Check every value of `cfg` and their combinations; returns the resolved feature schema.

    Raises:
        ConfigError: the first problem found; the message names the config key, the bad
            value and the valid values or what to do.
    """
    check_choices(cfg)
    check_single_run(cfg)
    if cfg.data.eval_path is None:
        raise ConfigError("data.eval_path is not set: give the rows to evaluate on.")
    check_holdout(cfg.data.holdout)
    check_trainer(cfg.trainer)
    check_model(cfg.model, cfg.trainer)
    _positive("tracking.flush_timeout_s", cfg.tracking.flush_timeout_s)
    _at_least(
        "export.quantization_eval_rows", cfg.export.quantization_eval_rows, 0, "0 to not measure"
    )
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    head_config(schema, cfg.model)  # the architecture's own checks (dims, towers, cross layers)
    return schema


def check_choices(node: Any, key: str = "") -> None:
    """Every StrEnum-typed field holds one of its members (configs built in Python skip
    Hydra's check, so `TrainerConfig(optimizer="lamb")` is caught here)."""
    if isinstance(node, dict):
        for name, value in node.items():
            check_choices(value, f"{key}.{name}")
        return
    if not dataclasses.is_dataclass(node):
        return
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value, where = getattr(node, f.name), f"{key}.{f.name}".lstrip(".")
        choice = _enum_in(hints[f.name])
        if choice is not None and value is not None and value not in set(choice):
            raise ConfigError(
                f"{where}={value!r} is not a valid choice; use one of {[c.value for c in choice]}."
            )
        check_choices(value, where)


def check_single_run(cfg: TrainConfig) -> None:
    """`data.days` belongs to `make train-days`, which trains each day as a run without it: a
    run that gets it would train data.train_path alone and ignore the days."""
    if cfg.data.days:
        raise ConfigError(
            f"data.days={cfg.data.days}: a single training run ignores it (it trains "
            f"data.train_path once). To train day after day, run "
            f"make train-days ARGS='data.days={cfg.data.days}' (recsys.train.days); "
            f"otherwise drop data.days."
        )


def check_holdout(holdout: HoldoutConfig) -> None:
    """The share of training rows held out for validation (without data.valid_path)."""
    if not 0.0 <= holdout.fraction < 1.0:
        raise ConfigError(
            f"data.holdout.fraction={holdout.fraction}: need 0 <= fraction < 1 (the share of "
            f"data.train_path held out for validation; 0: none)."
        )
    if not 0 <= holdout.seed < 2**32:
        raise ConfigError(f"data.holdout.seed={holdout.seed}: need 0 <= seed < 2**32.")


def check_trainer(trainer: TrainerConfig) -> None:
    _at_least("trainer.epochs", trainer.epochs, 1)
    _at_least("trainer.max_steps", trainer.max_steps, 0, "or null for no limit")
    _at_least("trainer.batch_size", trainer.batch_size, 1)
    _at_least("trainer.eval_batch_size", trainer.eval_batch_size, 1)
    _at_least("trainer.log_every_n_steps", trainer.log_every_n_steps, 1)
    _at_least(
        "trainer.eval_every_n_steps",
        trainer.eval_every_n_steps,
        1,
        "or null to evaluate at epoch ends only",
    )
    _at_least("trainer.shuffle_buffer", trainer.shuffle_buffer, 0)
    _at_least("trainer.num_workers", trainer.num_workers, 0)
    _positive("trainer.lr", trainer.lr)
    _positive("trainer.sparse_lr", trainer.sparse_lr)
    if trainer.first_order_lr is not None:
        _positive("trainer.first_order_lr", trainer.first_order_lr, "or null for sparse_lr")
    if trainer.first_order_stage_lr is not None:
        _positive("trainer.first_order_stage_lr", trainer.first_order_stage_lr, "or null for lr")
    for key in (
        "weight_decay",
        "sparse_weight_decay",
        "first_order_adagrad_beta",
        "momentum",
        "embedding_l2",
    ):
        _at_least(f"trainer.{key}", getattr(trainer, key), 0.0)
    if len(trainer.betas) != 2 or not all(0.0 <= b < 1.0 for b in trainer.betas):
        raise ConfigError(f"trainer.betas={list(trainer.betas)}: need two values in [0, 1).")
    check_schedule(trainer.lr_schedule)
    check_early_stopping(trainer.early_stopping)
    check_checkpoint(trainer.checkpoint)
    check_start(trainer)
    check_device(trainer)


def check_schedule(schedule: LRScheduleConfig) -> None:
    key = "trainer.lr_schedule"
    _at_least(f"{key}.warmup_steps", schedule.warmup_steps, 0)
    _at_least(f"{key}.decay_steps", schedule.decay_steps, 1, "or null for the rest of the run")
    if not 0.0 <= schedule.min_lr_ratio <= 1.0:
        raise ConfigError(f"{key}.min_lr_ratio={schedule.min_lr_ratio}: must be in [0, 1].")
    _at_least(f"{key}.step_every", schedule.step_every, 1)
    if not 0.0 < schedule.step_gamma <= 1.0:
        raise ConfigError(f"{key}.step_gamma={schedule.step_gamma}: need 0 < step_gamma <= 1.")


def check_early_stopping(stopping: EarlyStoppingConfig) -> None:
    _at_least("trainer.early_stopping.patience", stopping.patience, 0)
    _at_least("trainer.early_stopping.min_delta", stopping.min_delta, 0.0)


def check_checkpoint(checkpoint: CheckpointConfig) -> None:
    key = "trainer.checkpoint"
    _at_least(f"{key}.every_n_steps", checkpoint.every_n_steps, 1, "or null for epoch ends only")
    _at_least(f"{key}.keep_last", checkpoint.keep_last, 1)


def check_start(trainer: TrainerConfig) -> None:
    """Resume and warm start exclude each other, and name folders that exist."""
    if trainer.resume and trainer.warm_start:
        raise ConfigError(
            "trainer.resume and trainer.warm_start are both set: resume continues a run "
            "(optimizer state, step, data position); warm start begins a new one from its "
            "weights. Set one of them."
        )
    if trainer.resume and trainer.resume != "latest" and not Path(trainer.resume).exists():
        raise ConfigError(
            f"trainer.resume={trainer.resume}: no such folder; give a run folder, a "
            f"checkpoints/step_<N> folder, or latest."
        )
    if trainer.warm_start and not Path(trainer.warm_start).exists():
        raise ConfigError(
            f"trainer.warm_start={trainer.warm_start}: no such folder; give an export, "
            f"checkpoint or run folder."
        )


def check_device(trainer: TrainerConfig) -> None:
    """What this machine can run: CUDA visible for cuda, a fused kernel for the optimizer."""
    import torch

    if trainer.device == Device.cuda and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer=cpu.")
    if trainer.sparse_optimizer == SparseOptimizer.adam and trainer.device == Device.cpu:
        raise ConfigError(
            "trainer.sparse_optimizer=adam: FBGEMM's CPU kernels have no fused Adam; "
            "use rowwise_adagrad, adagrad or sgd on CPU, or trainer.device=cuda."
        )
    fused_l2 = (
        trainer.device == Device.cuda
        and trainer.sparse_optimizer == SparseOptimizer.rowwise_adagrad
    )
    if trainer.sparse_weight_decay > 0 and not fused_l2:
        # FBGEMM's CPU kernels (and its GPU ones but rowwise Adagrad's, as TorchRec passes
        # them) take the value and never apply it: the run would look regularized and not be.
        raise ConfigError(
            f"trainer.sparse_weight_decay={trainer.sparse_weight_decay}: FBGEMM applies it "
            f"only with trainer.device=cuda and sparse_optimizer=rowwise_adagrad (here "
            f"device={trainer.device}, sparse_optimizer={trainer.sparse_optimizer}); use "
            f"trainer.embedding_l2 instead, which works everywhere."
        )


def check_model(model: ModelConfig, trainer: TrainerConfig) -> None:
    _at_least("model.embedding_dim", model.embedding_dim, 1)
    if model.bias_in_rows and not model.first_order:
        raise ConfigError(
            "model.bias_in_rows=true folds the first-order biases into the embedding rows, but "
            "model.first_order=false has none: drop model.bias_in_rows or set first_order=true."
        )
    if model.bias_in_rows and trainer.first_order_lr is not None:
        raise ConfigError(
            f"trainer.first_order_lr={trainer.first_order_lr} needs bias tables of their own "
            "(a row has one learning rate), but model.bias_in_rows=true folds the biases into "
            "the embedding rows: set trainer.first_order_lr=null or model.bias_in_rows=false."
        )
    for key in ("dense_arch", "over_arch"):
        sizes = list(getattr(model, key))
        if any(size < 1 for size in sizes):
            raise ConfigError(f"model.{key}={sizes}: every hidden size must be >= 1.")
    if not 0.0 <= model.dropout < 1.0:
        raise ConfigError(f"model.dropout={model.dropout}: need 0 <= dropout < 1.")


def _at_least(key: str, value: float | None, low: float, hint: str = "") -> None:
    if value is not None and value < low:
        raise ConfigError(f"{key}={value}: must be >= {low}{f', {hint}' if hint else ''}.")


def _positive(key: str, value: float, hint: str = "") -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value}: must be > 0{f', {hint}' if hint else ''}.")


def _enum_in(hint: Any) -> type[StrEnum] | None:
    """The StrEnum of a field's type (`X` or `X | None`), else None."""
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if isinstance(arg, type) and issubclass(arg, StrEnum):
                return arg
    return None


__all__ = ["validate"]
