"""The training recipe: setup -> train -> evaluate -> export -> finish.

`run(cfg)` is importable and returns a `TrainResult`; the CLI is a thin Hydra wrapper around
it. Every rank runs this same code; only rank 0 prints, tracks and writes the export.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.config import ConfigError, Schema, TrainConfig, resolve_schema
from recsys.data.featurize import DataError
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.source import SourceFormat
from recsys.distributed.env import DistEnv, broadcast_object, init_distributed, shutdown_distributed
from recsys.distributed.sharding import attach_sparse_optimizer, full_state_dict, shard_model
from recsys.export.writer import write_export
from recsys.model.click import build_model
from recsys.tracking import Tracker, open_tracker
from recsys.train.checkpoint import ResumePoint, seed_everything
from recsys.train.evaluator import Evaluator
from recsys.train.loop import Evaluation, MetricsSink, TrainState, evaluate, train_epoch
from recsys.train.optim import LRScheduler, dense_optimizer_factory, estimated_total_steps
from recsys.train.restore import (
    Checkpointer,
    checkpointer,
    configure_determinism,
    provenance,
    restore,
    resume_progress,
)
from recsys.train.wrapper import ClickModelTrain

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced (complete on rank 0; other ranks get metrics only)."""

    metrics: dict[str, float]
    output_dir: Path
    run_id: str | None = None
    export_dir: Path | None = None
    predictions_path: Path | None = None
    steps: int = 0
    samples: int = 0  # real rows trained by this run (after a resume: since it)
    samples_per_second: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    tracking: str = ""
    stop_reason: str | None = None  # set when early stopping ended training


def run(cfg: TrainConfig) -> TrainResult:
    """Train, evaluate and export as `cfg` says; joins torchrun's process group if there is one."""
    env = init_distributed(cfg.trainer.device)
    try:
        return _run(cfg, env)
    finally:
        shutdown_distributed()


@dataclass
class _Parts:
    """What training works on, built once per run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_data: StreamingDataset
    eval_data: StreamingDataset
    schema: Schema
    saver: Checkpointer
    resume: ResumePoint | None


def _run(cfg: TrainConfig, env: DistEnv) -> TrainResult:
    configure_determinism(cfg.trainer)
    seed_everything(cfg.trainer.seed)
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    output_dir = Path(broadcast_object(str(Path(cfg.output_dir).resolve()), env))
    train_data, eval_data = datasets(cfg, schema, env)
    model, optimizer, plan = build_training(cfg, schema, env)
    point, warm = restore(cfg, model, optimizer, schema, env)
    tracker = open_tracker(
        cfg.tracking,
        cfg,
        enabled_on_this_rank=env.is_main,
        parent_run_id=cfg.tracking.parent_run_id,
    )
    with tracker:
        if env.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "sharding_plan.txt").write_text(str(plan))
            tracker.log_artifact(output_dir / "sharding_plan.txt")
        tracker.log_dict(json.loads(json.dumps(asdict(cfg), default=str)), "config.json")
        tracker.log_dict(schema.to_dict(), "schema.json")
        if (output_dir / ".hydra").is_dir():  # Hydra's composed config and the raw overrides
            tracker.log_artifacts(output_dir / ".hydra", "hydra")
        tracker.set_tags(provenance(point, warm))
        result = TrainResult(
            metrics={}, output_dir=output_dir, run_id=tracker.run_id, tracking=tracker.describe()
        )
        saver = checkpointer(cfg, model, optimizer, schema, env, output_dir)
        parts = _Parts(model, optimizer, train_data, eval_data, schema, saver, point)
        final = _train_and_evaluate(cfg, parts, env, tracker, result)
        if env.is_main:
            result.predictions_path = _write_predictions(
                final, output_dir / "eval_predictions.parquet", tracker
            )
        _export(cfg, model, schema, env, output_dir, tracker, result)
    return result


def datasets(
    cfg: TrainConfig, schema: Schema, env: DistEnv
) -> tuple[StreamingDataset, StreamingDataset]:
    """This rank's train and eval streams (public for benchmarks and tests)."""
    if cfg.data.eval_path is None:
        raise ConfigError("data.eval_path is not set: give the rows to evaluate on.")
    trainer = cfg.trainer
    source = SourceFormat.from_config(cfg.data)
    train_opts = LoaderOptions(
        trainer.batch_size,
        trainer.shuffle_buffer,
        trainer.shuffle_files,
        trainer.seed,
        trainer.num_workers,
        source,
    )
    eval_opts = LoaderOptions(
        trainer.eval_batch_size, num_workers=trainer.num_workers, source=source
    )
    try:
        train = StreamingDataset(cfg.data.train_path, schema, train_opts, env.rank, env.world_size)
        evaluation = StreamingDataset(
            cfg.data.eval_path, schema, eval_opts, env.rank, env.world_size
        )
    except DataError as e:
        if cfg.data.prepare_hint is None:
            raise
        raise DataError(f"{e} For data={cfg.data.name}: {cfg.data.prepare_hint}.") from e
    return train, evaluation


def build_training(
    cfg: TrainConfig, schema: Schema, env: DistEnv
) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    """The sharded train model, its combined (fused sparse + dense) optimizer and the plan."""
    # Tables start on "meta": DistributedModelParallel allocates only this rank's shards.
    model = build_model(schema, cfg.model, device=torch.device("meta"))
    sparse = model.sparse_arch
    attach_sparse_optimizer(sparse.embedding_bags, cfg.trainer, cfg.trainer.sparse_lr)
    if sparse.first_order_bags is not None:
        # The wide part may get its own step size, as wide-and-deep's wide optimizer does
        # (on MovieLens a larger one overfit: validation AUC 0.7125 -> 0.709 at 5x).
        first_order_lr = cfg.trainer.first_order_lr or cfg.trainer.sparse_lr
        attach_sparse_optimizer(sparse.first_order_bags, cfg.trainer, first_order_lr)
    sharded, plan = shard_model(ClickModelTrain(model), env, cfg.sharding.type)
    dense_params = dict(in_backward_optimizer_filter(sharded.named_parameters()))
    dense = KeyedOptimizerWrapper(dense_params, dense_optimizer_factory(cfg.trainer))
    optimizer = CombinedOptimizer([sharded.fused_optimizer, dense])
    return sharded, optimizer, plan


def _train_and_evaluate(
    cfg: TrainConfig, parts: _Parts, env: DistEnv, tracker: Tracker, result: TrainResult
) -> Evaluation:
    """Train epoch by epoch, evaluating every N steps and after each epoch (on the validation
    set when there is one, then once on eval at the end); returns the final evaluation."""
    if cfg.trainer.epochs < 1:
        raise ConfigError(f"trainer.epochs={cfg.trainer.epochs}: need at least 1.")
    point = parts.resume
    state = TrainState(step=point.step if point else 0, epoch=point.epoch if point else 0)
    resume = resume_progress(point)  # the loader position inside the first epoch
    valid_data = _valid_dataset(cfg, parts.schema, env, parts.eval_data)
    evaluator = _evaluator(cfg, parts, valid_data, env, tracker, result)
    scheduler = _scheduler(cfg, parts.optimizer, parts.train_data, env)

    def after_step(state: TrainState) -> None:
        evaluator.after_step(state)
        parts.saver.after_step(state.step, state.epoch, state.progress)

    evaluation = None
    for epoch in range(state.epoch, cfg.trainer.epochs):
        state.epoch = epoch
        go_on = train_epoch(
            parts.model,
            parts.optimizer,
            parts.train_data,
            parts.schema,
            cfg.trainer,
            env,
            state,
            _sink(tracker, result),
            after_step=after_step,
            scheduler=scheduler,
            resume=resume,
        )
        resume = None
        evaluation = evaluator.at_epoch_end(state)
        _log_epoch(evaluation, state, evaluator.prefix, env)
        if not go_on:
            parts.saver.at_stop(state.step, epoch, state.progress)
            break
        parts.saver.after_epoch(state.step, epoch + 1)
    _record_stop(state, tracker, result)
    if valid_data is not None:
        evaluation = evaluate(parts.model, parts.eval_data, parts.schema, env)
        _record_evaluation(evaluation, state, tracker, result, "eval")
    elif evaluation is None:  # resumed from a checkpoint written at the end of training
        evaluation = evaluator.at_epoch_end(state)
    result.steps, result.samples = state.step, state.samples
    result.samples_per_second = state.samples_per_second
    return evaluation


def _sink(tracker: Tracker, result: TrainResult) -> MetricsSink:
    def sink(metrics: dict[str, float], step: int) -> None:
        tracker.log_metrics(metrics, step)
        result.history.append({"step": float(step), **metrics})

    return sink


def _evaluator(
    cfg: TrainConfig,
    parts: _Parts,
    valid_data: StreamingDataset | None,
    env: DistEnv,
    tracker: Tracker,
    result: TrainResult,
) -> Evaluator:
    """Mid-run evaluations: on data.valid_path when set (logged as valid/*), else eval/*."""

    def record(evaluation: Evaluation, state: TrainState, prefix: str) -> None:
        _record_evaluation(evaluation, state, tracker, result, prefix)

    data, prefix = (parts.eval_data, "eval") if valid_data is None else (valid_data, "valid")
    return Evaluator(parts.model, data, parts.schema, env, cfg.trainer, record, prefix)


def _valid_dataset(
    cfg: TrainConfig, schema: Schema, env: DistEnv, eval_data: StreamingDataset
) -> StreamingDataset | None:
    """The validation rows (data.valid_path), or None: mid-run evaluations then use eval."""
    if cfg.data.valid_path is None:
        if cfg.trainer.early_stopping.enabled and env.is_main:
            log.warning(
                "trainer.early_stopping watches data.eval_path, so eval metrics are no longer "
                "unseen; set data.valid_path to stop on a validation set instead."
            )
        return None
    # Read exactly as the eval rows are (batch size, file format).
    return StreamingDataset(
        cfg.data.valid_path, schema, eval_data.options, env.rank, env.world_size
    )


def _scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, train_data: StreamingDataset, env: DistEnv
) -> LRScheduler:
    t = cfg.trainer
    total = estimated_total_steps(
        train_data.num_rows, t.batch_size, env.world_size, t.epochs, t.max_steps
    )
    return LRScheduler(optimizer, t.lr_schedule, total)


def _log_epoch(evaluation: Evaluation, state: TrainState, prefix: str, env: DistEnv) -> None:
    if env.is_main:
        m = evaluation.metrics
        log.info(
            "epoch %d: step %d, %s AUC %.4f, log loss %.4f, %.0f samples/s",
            state.epoch,
            state.step,
            prefix,
            m.auc,
            m.log_loss,
            state.samples_per_second,
        )


def _record_stop(state: TrainState, tracker: Tracker, result: TrainResult) -> None:
    if state.stop_reason is None:
        return
    result.stop_reason = state.stop_reason
    tracker.set_tags({"stop_reason": state.stop_reason})
    tracker.log_metrics({"train/early_stopped": 1.0}, state.step)
    log.info("%s", state.stop_reason)


def _record_evaluation(
    evaluation: Evaluation, state: TrainState, tracker: Tracker, result: TrainResult, prefix: str
) -> None:
    metrics = evaluation.metrics.as_dict(prefix=f"{prefix}/")
    if state.train_seconds:  # counted at epoch ends; a mid-epoch evaluation has no new value
        metrics["train/samples_per_s_epoch_avg"] = state.samples_per_second
    tracker.log_metrics({**metrics, "epoch": float(state.epoch)}, state.step)
    result.metrics = metrics
    result.history.append({"step": float(state.step), **metrics})


def _write_predictions(evaluation: Evaluation, path: Path, tracker: Tracker) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"row_id": evaluation.row_ids, "prob": evaluation.probs})
    pq.write_table(table, path)
    tracker.log_artifact(path)
    return path


def _export(
    cfg: TrainConfig,
    model: nn.Module,
    schema: Schema,
    env: DistEnv,
    output_dir: Path,
    tracker: Tracker,
    result: TrainResult,
) -> None:
    if not cfg.export.enabled:
        return
    state = full_state_dict(model, env)  # a collective: all ranks take part
    if not env.is_main:
        return
    prefix = "model."  # ClickModelTrain keeps the model under `.model`
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    inner = model.module.model if hasattr(model, "module") else model.model
    provenance = {
        "mlflow_run_id": result.run_id,
        "output_dir": str(output_dir),
        "eval_metrics": result.metrics,
    }
    result.export_dir = write_export(
        output_dir / cfg.export.subdir, schema, inner.head_config, state, provenance
    )
    tracker.log_artifacts(result.export_dir, "export")


__all__ = ["TrainResult", "run"]
