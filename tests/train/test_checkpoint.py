"""Checkpoint files: atomic writes, keep-last pruning, `latest`, round trips, schema checks.

A small dense model under a real torchrec KeyedOptimizerWrapper and real DCP files; no
process group is needed for one process. Sharded tables are covered by the resume tests.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from recsys.compose import load_config
from recsys.config import TrainConfig
from recsys.data.progress import EpochProgress
from recsys.distributed.env import DistEnv
from recsys.schema import resolve_schema
from recsys.train.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from recsys.train.checkpoint_checks import check_schema
from recsys.train.checkpoint_layout import (
    META_FILE,
    CheckpointError,
    find_latest,
    prune_checkpoints,
    resolve_checkpoint,
)

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


@pytest.fixture
def cfg(tiny_log) -> TrainConfig:
    return load_config(tiny_log.overrides + ["tracking=none"])


def _model_and_optimizer(seed: int) -> tuple[nn.Module, CombinedOptimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    dense = KeyedOptimizerWrapper(
        dict(model.named_parameters()), lambda p: torch.optim.AdamW(p, lr=0.01)
    )
    return model, CombinedOptimizer([dense])


def _train(model: nn.Module, optimizer, steps: int) -> list[float]:
    """Steps on random data drawn from torch's global RNG (so restored RNG matters)."""
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 4)
        loss = ((model(x).squeeze(1) - x.sum(1)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _progress(rows: int) -> EpochProgress:
    return EpochProgress(epoch=1, rows=rows, bad_rows={"label_missing": 2}, done_units={0})


def test_resumed_training_continues_bit_identically(cfg: TrainConfig, tmp_path: Path) -> None:
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    model, optimizer = _model_and_optimizer(seed=1)
    _train(model, optimizer, 3)
    save_checkpoint(tmp_path, model, optimizer, 3, 1, _progress(5), schema, cfg, ENV, keep_last=2)
    expected = _train(model, optimizer, 4)  # the uninterrupted run

    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a fresh process would differ
    fresh, fresh_optimizer = _model_and_optimizer(seed=2)
    point = load_checkpoint(
        tmp_path / "checkpoints" / "step_3", fresh, fresh_optimizer, schema, ENV, 0
    )
    assert (point.step, point.epoch) == (3, 1)
    progress = EpochProgress.from_state_dict(point.progress)
    assert progress.rows == 5 and progress.bad_rows == {"label_missing": 2}
    assert progress.done_units == {0}
    assert _train(fresh, fresh_optimizer, 4) == expected  # weights, Adam moments and RNG


def test_tmp_folder_is_never_latest_and_keep_last_prunes(cfg: TrainConfig, tmp_path: Path) -> None:
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    model, optimizer = _model_and_optimizer(seed=1)
    run_a, run_b = tmp_path / "outputs" / "a", tmp_path / "outputs" / "b"
    for step in (2, 4, 6):
        _train(model, optimizer, 1)
        save_checkpoint(run_a, model, optimizer, step, 0, None, schema, cfg, ENV, keep_last=2)
    root = run_a / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_4", "step_6"]

    # A crash while writing step 8 in another, newer run: its .tmp folder has shards but is
    # not complete, so `latest` still finds run a's step 6, which is untouched.
    crashed = run_b / "checkpoints" / "step_8.tmp"
    shutil.copytree(root / "step_6", crashed)
    (crashed / META_FILE).touch()  # even a meta file does not make a .tmp complete
    assert find_latest(tmp_path / "outputs") == root / "step_6"
    assert resolve_checkpoint(str(run_a), tmp_path) == root / "step_6"  # a run folder
    with pytest.raises(CheckpointError, match="interrupted write"):
        resolve_checkpoint(str(crashed), tmp_path)

    # The next save in that run removes the leftover, and a newer checkpoint wins.
    save_checkpoint(run_b, model, optimizer, 10, 0, None, schema, cfg, ENV, keep_last=1)
    assert sorted(p.name for p in (run_b / "checkpoints").iterdir()) == ["step_10"]
    assert find_latest(tmp_path / "outputs") == run_b / "checkpoints" / "step_10"
    assert prune_checkpoints(root, keep_last=1) == [root / "step_4"]


def test_latest_with_no_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="every_n_steps"):
        resolve_checkpoint("latest", tmp_path)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "nowhere"), tmp_path)


def test_schema_mismatch_names_the_data_keys(cfg: TrainConfig, tiny_log) -> None:
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    other = load_config(
        tiny_log.overrides + ["data.tables.user_id.num_buckets=1024", "data.features.gender.seed=9"]
    )
    changed = resolve_schema(other.data, other.model.embedding_dim)
    check_schema(schema.to_dict(), schema, Path("ckpt"))  # the same schema passes
    with pytest.raises(CheckpointError) as err:
        check_schema(schema.to_dict(), changed, Path("ckpt"))
    message = str(err.value)
    assert "data.tables.user_id.num_buckets: 512 -> 1024" in message
    assert "data.features.gender.seed: " in message
    assert "item_id" not in message  # only what differs


def test_checkpointer_saves_every_n_steps_and_epoch_ends_once(tmp_path: Path) -> None:
    written: list[tuple[int, int, object]] = []

    def save(output_dir: Path, step: int, epoch: int, progress, keep_last: int) -> Path:
        written.append((step, epoch, progress))
        return output_dir / f"step_{step}"

    every = Checkpointer(tmp_path, every_n_steps=3, at_epoch_end=True, keep_last=2, save=save)
    for step in range(1, 7):
        every.after_step(step, 0, f"p{step}")
    every.after_epoch(6, 1)  # step 6 is saved already (mid-epoch position: the epoch's end)
    every.after_epoch(8, 2)
    every.at_stop(10, 2, "p10")  # max_steps inside epoch 2: its position, not epoch 3
    assert written == [(3, 0, "p3"), (6, 0, "p6"), (8, 2, None), (10, 2, "p10")]
    with pytest.raises(Exception, match="every_n_steps=0"):
        Checkpointer(tmp_path, every_n_steps=0, at_epoch_end=True, keep_last=2, save=save)
