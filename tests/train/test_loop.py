"""The training loop: pipeline vs plain loop, the lr that reaches the kernels, between steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper
from torchrec.distributed.types import ShardingEnv

from recsys.compose import load_config
from recsys.distributed.env import init_distributed, shutdown_distributed
from recsys.schema import resolve_schema
from recsys.train import build
from recsys.train.loop import Epoch, TrainJob, TrainState
from recsys.train.optim import LRScheduler, lr_factor
from recsys.train.recipe import run
from recsys.train.steppers import PlainStepper, uses_pipeline
from tests.synthetic import TinyLog

QUIET = ["tracking=none", "export.enabled=false"]
ROWS, BATCH = 2850, 128  # the tiny log's training rows (less 5% held out) and batch size


def test_pipeline_trains_exactly_the_model_the_plain_loop_trains(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    """TrainPipelineSparseDist reorders only communication: same batches, same weights."""
    common = tiny_log.overrides + QUIET + ["trainer.epochs=1", "trainer.eval_every_n_steps=10"]
    common += ["trainer.early_stopping.enabled=false"]  # the last model: no restore
    results = {}
    for pipeline in (True, False):
        out = tmp_path / f"pipeline_{pipeline}"
        cfg = load_config(common + [f"trainer.pipeline={pipeline}"], output_dir=str(out))
        results[pipeline] = run(cfg), pq.read_table(out / "eval_predictions.parquet")
    (piped, piped_preds), (plain, plain_preds) = results[True], results[False]
    assert piped.steps == plain.steps == -(-ROWS // BATCH)
    np.testing.assert_allclose(
        piped_preds["prob"].to_numpy(), plain_preds["prob"].to_numpy(), rtol=0, atol=1e-6
    )
    # Mid-epoch evaluations pause the pipeline and resume it without losing a batch.
    evals = [h["step"] for h in piped.history if "valid/auc" in h]
    assert evals == [10, 20, 23]
    losses = {p: [h["train/loss"] for h in r.history if "train/loss" in h] for p, r in
              ((True, piped), (False, plain))}  # fmt: skip
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert piped.samples == plain.samples == ROWS


def _setup(tiny_log: TinyLog, tmp_path: Path, extra: list[str]):
    cfg = load_config(tiny_log.overrides + QUIET + extra, output_dir=str(tmp_path / "o"))
    env = init_distributed("cpu")
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    train_data = build.datasets(cfg, schema, env).train
    training = build.build_training(cfg, schema, env)
    return cfg, env, schema, train_data, training.model, training.optimizer


def _fused_kernels(optimizer) -> list:
    """FBGEMM's fused kernels under `optimizer` (torchrec's EmbeddingFusedOptimizers')."""
    found = []

    def walk(opt) -> None:
        for _, sub in getattr(opt, "optimizers", []):
            walk(sub)
        if hasattr(opt, "_emb_module"):  # torchrec's EmbeddingFusedOptimizer
            found.append(opt._emb_module)

    walk(optimizer)
    return found


def _kernel_lrs(optimizer) -> list[float]:
    """The learning rate FBGEMM's fused kernels hold (what the backward pass will use)."""
    return [kernel.get_learning_rate() for kernel in _fused_kernels(optimizer)]


def _kernel_eps(optimizer) -> list[float]:
    """The eps of FBGEMM's fused kernels (Adagrad's denominator offset)."""
    return [kernel.optimizer_args.eps for kernel in _fused_kernels(optimizer)]


@pytest.mark.parametrize("pipeline", [True, False])
def test_schedule_reaches_dense_and_fused_sparse_optimizers(
    tiny_log: TinyLog, tmp_path: Path, pipeline: bool
) -> None:
    extra = [
        f"trainer.pipeline={pipeline}",
        "trainer.lr=0.01",
        "trainer.sparse_lr=0.2",
        "trainer.first_order_lr=0.4",
        "trainer.lr_schedule.warmup_steps=3",
        "trainer.lr_schedule.decay=cosine",
        "trainer.lr_schedule.min_lr_ratio=0.1",
        "trainer.max_steps=10",
    ]
    cfg, env, schema, train_data, model, optimizer = _setup(tiny_log, tmp_path, extra)
    try:
        scheduler = LRScheduler(optimizer, cfg.trainer.lr_schedule, total_steps=10)
        seen: list[tuple[float, list[float], float]] = []

        logged: list[dict[str, float]] = []
        state = TrainState()
        job = TrainJob(model, optimizer, schema, cfg.trainer, env, scheduler)
        with Epoch(job, train_data, state) as epoch:
            for report in epoch:  # between steps: what the fused kernels will use next
                dense = optimizer.optimizers[-1][1].param_groups[0]["lr"]
                seen.append((dense, _kernel_lrs(optimizer), state.step))
                if report.metrics:
                    logged.append(report.metrics)
    finally:
        shutdown_distributed()
    assert len(seen) == 10
    for dense, kernels, step in seen:
        factor = lr_factor(int(step) - 1, cfg.trainer.lr_schedule, 10)  # the step just taken
        assert dense == pytest.approx(0.01 * factor, rel=1e-6)
        # One kernel per (lr, pooling) group: tables at sparse_lr, bias tables at first_order_lr.
        distinct = sorted({round(k, 6) for k in kernels})
        assert distinct == pytest.approx([0.2 * factor, 0.4 * factor], rel=1e-5)
    assert seen[0][0] == pytest.approx(0.01 / 4) and seen[3][0] == pytest.approx(0.01)
    # lr and the train-window metrics are logged at log steps (every 5).
    assert logged[0]["lr/dense"] == pytest.approx(0.01 * lr_factor(4, cfg.trainer.lr_schedule, 10))
    assert {"train/auc", "train/ne", "train/calibration", "train/ctr", "train/loss"} <= set(
        logged[0]
    )


def test_step_hook_sees_only_completed_batches_while_the_pipeline_prefetches(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    extra = ["trainer.pipeline=true", "trainer.max_steps=5", "trainer.shuffle_buffer=0"]
    cfg, env, schema, train_data, model, optimizer = _setup(tiny_log, tmp_path, extra)
    rows_at_step: list[tuple[int, int]] = []
    state = TrainState()
    job = TrainJob(model, optimizer, schema, cfg.trainer, env)
    try:
        with Epoch(job, train_data, state) as epoch:
            for report in epoch:
                rows_at_step.append((report.state.step, report.state.progress.rows))
        epoch.end()
    finally:
        shutdown_distributed()
    # The pipeline has pulled two batches beyond each step; progress holds only trained ones.
    assert rows_at_step == [(k, k * BATCH) for k in range(1, 6)]
    assert state.progress.epoch == 0 and state.samples == 5 * BATCH


def test_one_cpu_process_trains_without_pipeline_or_ddp(tiny_log: TinyLog, tmp_path: Path) -> None:
    """trainer.pipeline=null and a world of one: the plain loop and no DDP (nothing to overlap
    or to sync), with the same state-dict keys as DDP gives, so checkpoints still move."""
    cfg, env, schema, train_data, model, optimizer = _setup(tiny_log, tmp_path, [])
    try:
        assert cfg.trainer.pipeline is None
        assert not isinstance(model._dmp_wrapped_module, DistributedDataParallel)
        with Epoch(
            TrainJob(model, optimizer, schema, cfg.trainer, env), train_data, TrainState()
        ) as epoch:
            assert isinstance(epoch._stepper, PlainStepper)
        keys = list(model.state_dict())
        names = [name for name, _ in model.named_parameters()]  # the dense optimizer's keys
        DefaultDataParallelWrapper().wrap(
            model, ShardingEnv.from_process_group(dist.group.WORLD), env.device
        )
        assert isinstance(model._dmp_wrapped_module, DistributedDataParallel)
        assert list(model.state_dict()) == keys
        assert [name for name, _ in model.named_parameters()] == names
    finally:
        shutdown_distributed()
    assert uses_pipeline(torch.device("cpu"), world_size=2)
    assert uses_pipeline(torch.device("cuda"), world_size=1)
    assert not uses_pipeline(torch.device("cpu"), world_size=1)


def test_adagrad_beta_reaches_the_bias_tables_kernel_per_training_row(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    extra = ["trainer.first_order_adagrad_beta=2.0", "trainer.batch_size=64"]
    try:
        _, _, _, _, _, optimizer = _setup(tiny_log, tmp_path, extra)
        eps = _kernel_eps(optimizer)
    finally:
        shutdown_distributed()
    # The bias tables' kernel gets beta / batch_size; the embedding tables keep FBGEMM's 1e-8.
    assert sorted(set(eps)) == pytest.approx([1e-8, 2.0 / 64])


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_adagrad_beta_is_adagrads_alone(tiny_log: TinyLog, tmp_path: Path, optimizer: str) -> None:
    # With SGD (no offset) the default beta must not stop the run or reach a kernel; plain
    # Adagrad has the same offset as rowwise.
    extra = [f"trainer.sparse_optimizer={optimizer}", "trainer.batch_size=64"]
    try:
        _, _, _, _, _, optimizer_ = _setup(tiny_log, tmp_path, extra)
        eps = _kernel_eps(optimizer_)
    finally:
        shutdown_distributed()
    expected = [1e-8] if optimizer == "sgd" else [1e-8, 1.0 / 64]
    assert sorted(set(eps)) == pytest.approx(expected)


def _bias_rows_moved(tiny_log: TinyLog, tmp_path: Path, beta: float) -> float:
    """The largest move of any bias-table entry in one training step (no stage), in lrs."""
    extra = [
        "trainer.first_order_stage=false",
        "trainer.max_steps=1",
        f"trainer.first_order_adagrad_beta={beta}",
    ]

    def bias_rows(model) -> dict[str, torch.Tensor]:
        state = model.state_dict()
        return {k: v.local_shards()[0].tensor.clone() for k, v in state.items() if "__first" in k}

    try:
        cfg, env, schema, train_data, model, optimizer = _setup(tiny_log, tmp_path, extra)
        before = bias_rows(model)
        job = TrainJob(model, optimizer, schema, cfg.trainer, env)
        with Epoch(job, train_data, TrainState()) as epoch:
            steps = sum(1 for _ in epoch)
        after = bias_rows(model)
    finally:
        shutdown_distributed()
    assert before and steps == 1
    moved = max(float((after[k] - before[k]).abs().max()) for k in before)
    return moved / cfg.trainer.sparse_lr


def test_adagrad_beta_damps_the_first_steps_of_bias_rows(tiny_log: TinyLog, tmp_path: Path) -> None:
    # Without an offset a row's first step is a full sparse_lr whatever its gradient;
    # an offset far above any one batch's gradient (beta / batch_size = 100) leaves the
    # rows all but where they started: the CPU kernel applies it, not just stores it.
    plain = _bias_rows_moved(tiny_log, tmp_path / "plain", 0.0)
    damped = _bias_rows_moved(tiny_log, tmp_path / "damped", 100.0 * BATCH)
    assert plain == pytest.approx(1.0, rel=1e-3)
    assert damped < 0.01
