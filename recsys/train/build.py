"""What a run trains on, built from the config: this rank's data streams, the sharded model.

The recipe's setup step calls these; benchmarks and tests call them to build the same parts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.config import DataConfig, TrainConfig, TrainerConfig
from recsys.data.featurize import DataError
from recsys.data.holdout import HoldoutSplit
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.source import SourceFormat
from recsys.distributed.env import DistEnv
from recsys.distributed.gather import held_shards
from recsys.distributed.sharding import attach_sparse_optimizer, shard_model
from recsys.model.click import build_model
from recsys.model.layout import WeightLayout
from recsys.model.registry import AnyHeadConfig
from recsys.model.sparse import SparseArch
from recsys.schema import Schema
from recsys.train.checkpoint_layout import CheckpointError
from recsys.train.optim import dense_optimizer_factory
from recsys.train.wrapper import ClickModelTrain

log = logging.getLogger(__name__)


@dataclass
class Datasets:
    """This rank's streams. `valid` is what mid-run evaluations and early stopping read:
    data.valid_path when set, else the rows `data.holdout` keeps out of training (both logged
    as valid/*), else (holdout fraction 0) the eval rows (eval/*). `validation` says which."""

    train: StreamingDataset
    eval: StreamingDataset
    valid: StreamingDataset
    valid_prefix: str
    validation: str = "data.eval_path"


def datasets(cfg: TrainConfig, schema: Schema, env: DistEnv) -> Datasets:
    """This rank's train, eval and validation streams (public for benchmarks and tests)."""
    trainer, source = cfg.trainer, SourceFormat.from_config(cfg.data)
    train_opts = LoaderOptions(
        trainer.batch_size,
        trainer.shuffle_buffer,
        trainer.shuffle_files,
        trainer.seed,
        trainer.num_workers,
        source,
    )
    # Evaluation rows are read alike (batch size, format) whether validation or eval.
    eval_opts = LoaderOptions(
        trainer.eval_batch_size, num_workers=trainer.num_workers, source=source
    )

    def stream(path: str, options: LoaderOptions) -> StreamingDataset:
        try:
            return StreamingDataset(path, schema, options, env.rank, env.world_size)
        except DataError as e:
            if cfg.data.prepare_hint is None:
                raise
            raise DataError(f"{e} For data={cfg.data.name}: {cfg.data.prepare_hint}.") from e

    data, held = cfg.data, _held_out(cfg.data)
    kept = replace(held, held_out=False) if held is not None else None
    train = stream(data.train_path, replace(train_opts, holdout=kept))
    evaluation = stream(data.eval_path, eval_opts)
    if data.valid_path is not None:
        valid = stream(data.valid_path, eval_opts)
        found = Datasets(train, evaluation, valid, "valid", f"data.valid_path={data.valid_path}")
    elif held is not None:
        valid = stream(data.train_path, replace(eval_opts, holdout=held))
        found = Datasets(train, evaluation, valid, "valid", f"data.holdout: {held.describe()}")
    else:
        found = Datasets(train, evaluation, evaluation, "eval")
    if env.is_main:
        log.info("validation: %s", found.validation)
    return found


def _held_out(data: DataConfig) -> HoldoutSplit | None:
    """Without data.valid_path, the validation rows are held out of data.train_path: each
    row is trained on or validated on, never both (recsys.data.holdout)."""
    if data.valid_path is None and data.holdout.fraction > 0:
        return HoldoutSplit.from_config(data.holdout, held_out=True)
    return None


def check_validation(saved: str | None, data: Datasets, checkpoint: Path) -> None:
    """A resumed run validates on the rows its checkpoint's run did: other held-out rows
    would mean rows trained on before are validated on now, or held-out rows trained on."""
    if saved is not None and saved != data.validation:
        raise CheckpointError(
            f"{checkpoint} was trained with validation on {saved}, this run would validate on "
            f"{data.validation}. Resume with that run's data.valid_path and data.holdout, or "
            f"start a new run with trainer.warm_start={checkpoint}."
        )


@dataclass
class Training:
    """The sharded train model and what is known about it."""

    model: nn.Module  # DistributedModelParallel(ClickModelTrain(ClickModel))
    optimizer: torch.optim.Optimizer  # fused sparse + dense, combined
    plan: object  # TorchRec's ShardingPlan
    layout: WeightLayout  # which of model.state_dict()'s entries are which table
    head_config: AnyHeadConfig  # the dense part's architecture (exported beside its weights)


def build_training(cfg: TrainConfig, schema: Schema, env: DistEnv) -> Training:
    """The sharded train model, its combined (fused sparse + dense) optimizer and the plan."""
    # Tables start on "meta": DistributedModelParallel allocates only this rank's shards.
    model = build_model(schema, cfg.model, device=torch.device("meta"))
    _attach_sparse_optimizers(model.sparse_arch, cfg.trainer)
    wrapped = ClickModelTrain(model, cfg.trainer.embedding_l2)
    sharded, plan = shard_model(wrapped, env, cfg.sharding.type)
    _zero_folded_biases(sharded.state_dict(), wrapped.weight_layout())
    dense_params = dict(in_backward_optimizer_filter(sharded.named_parameters()))
    dense = KeyedOptimizerWrapper(dense_params, dense_optimizer_factory(cfg.trainer))
    optimizer = CombinedOptimizer([sharded.fused_optimizer, dense])
    return Training(sharded, optimizer, plan, wrapped.weight_layout(), model.head_config)


@torch.no_grad()
def _zero_folded_biases(state: dict, layout: WeightLayout) -> None:
    """Zero the bias columns of every row this rank holds: the tables' init (uniform, whole
    rows) would start each id with a random bias, where a logistic regression starts at 0."""
    for table in layout.folded:
        bias = held_shards(state[layout.tables[table]]).columns(layout.columns(table, bias=True))
        for _, _, block in bias.blocks:
            block.zero_()


def _attach_sparse_optimizers(sparse: SparseArch, trainer: TrainerConfig) -> None:
    """Fuse the sparse optimizer into the tables' backward, bias tables at first_order_lr.

    The wide part may get its own step size, as wide-and-deep's wide optimizer does (on
    MovieLens a larger one overfit: validation AUC 0.7125 -> 0.709 at 5x). Tables with the
    same settings share one fused kernel; another lr puts the bias tables in a kernel of
    their own (same collection, same input split), as does first_order_adagrad_beta.
    """
    first_order_lr = trainer.first_order_lr or trainer.sparse_lr
    tables, biases = sparse.table_parameters(), sparse.bias_parameters()
    if tables:
        attach_sparse_optimizer(nn.ParameterList(tables), trainer, trainer.sparse_lr)
    if biases:
        eps = trainer.first_order_adagrad_beta / trainer.batch_size or None  # per training row
        attach_sparse_optimizer(nn.ParameterList(biases), trainer, first_order_lr, eps)


__all__ = [
    "Datasets",
    "Training",
    "build_training",
    "check_validation",
    "datasets",
]
