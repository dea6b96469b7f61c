"""Checkpoints are never unpickled: trainer state loads with `weights_only=True`, a file that
smuggles in an object is refused before its code runs, other format versions say what to do.

A small dense model under a real torchrec optimizer and real DCP files, as in test_checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from recsys.compose import load_config
from recsys.data.progress import EpochProgress
from recsys.distributed.env import DistEnv
from recsys.schema import resolve_schema
from recsys.train.checkpoint import load_checkpoint, save_checkpoint
from recsys.train.checkpoint_layout import FORMAT_VERSION, META_FILE, STATE_FILE, CheckpointError

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
PLAIN = (int, float, str, bool, type(None))


def _model_and_optimizer(seed: int) -> tuple[nn.Module, CombinedOptimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    dense = KeyedOptimizerWrapper(
        dict(model.named_parameters()), lambda p: torch.optim.AdamW(p, lr=0.01)
    )
    return model, CombinedOptimizer([dense])


def _progress() -> EpochProgress:
    """Every kind of value the loader's position holds: open units' ids, done units, workers."""
    return EpochProgress(
        epoch=1,
        rows=7,
        bad_rows={"label_missing": 2},
        done_units={4, 0},
        partial={3: [np.array([9, 2], np.int64), np.array([5], np.int64)]},
        next_worker={0: (1, 2, 1)},
    )


@pytest.fixture
def saved(tiny_log, tmp_path: Path) -> dict[str, Any]:
    """A checkpoint written mid-epoch, and the draws each generator makes right after it."""
    cfg = load_config(tiny_log.overrides + ["tracking=none"])
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    model, optimizer = _model_and_optimizer(seed=1)
    model(torch.randn(16, 4)).square().mean().backward()
    optimizer.step()  # the optimizer has state (Adam's moments) to save
    np.random.standard_normal()  # NumPy now caches a Gaussian: part of its state too
    path = save_checkpoint(tmp_path, model, optimizer, 3, 1, _progress(), schema, cfg, ENV, 2)
    draws = (random.random(), np.random.standard_normal(), torch.rand(3).tolist())
    return {"path": path, "schema": schema, "draws": draws}


def _load(saved: dict[str, Any]):
    model, optimizer = _model_and_optimizer(seed=2)
    return load_checkpoint(saved["path"], model, optimizer, saved["schema"], ENV, seed=0)


def _types_in(value: Any) -> set[type]:
    if isinstance(value, dict):
        return {dict}.union(*(_types_in(k) | _types_in(v) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return {type(value)}.union(*(_types_in(v) for v in value))
    return {type(value)}


def test_trainer_state_is_tensors_and_plain_values_and_resumes_exactly(saved) -> None:
    state = torch.load(saved["path"] / STATE_FILE, weights_only=True)
    assert state["format_version"] == FORMAT_VERSION
    assert _types_in(state) <= {dict, list, tuple, torch.Tensor, *PLAIN}, _types_in(state)

    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a fresh process would differ
    point = _load(saved)
    draws = (random.random(), np.random.standard_normal(), torch.rand(3).tolist())
    assert draws == saved["draws"]  # Python, NumPy (cached Gaussian included), torch
    progress = EpochProgress.from_state_dict(point.progress)
    assert progress.done_units == {0, 4} and progress.next_worker == {0: (1, 2, 1)}
    np.testing.assert_array_equal(progress.recorded_ids(3), [2, 5, 9])
    assert progress.partial[3][0].dtype == np.int64


class _Payload:
    """Unpickling it creates `marker`: code from the file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickled_object_in_trainer_state_is_refused_not_run(saved, tmp_path: Path) -> None:
    file, marker = saved["path"] / STATE_FILE, tmp_path / "payload_ran"
    state = torch.load(file, weights_only=True)
    torch.save({**state, "extra": {"scheduler": _Payload(marker)}}, file)

    with pytest.raises(CheckpointError) as err:
        _load(saved)
    assert str(file) in str(err.value) and "was not loaded" in str(err.value)
    assert "mkdir" in str(err.value)  # what was refused, named
    assert not marker.exists()

    # The payload is live: an unsafe load would have run it (so the check above can fail).
    torch.load(file, weights_only=False)
    assert marker.exists()


def test_a_pickled_object_in_dcp_metadata_is_refused_not_run(saved, tmp_path: Path) -> None:
    """DCP itself reads `.metadata` with plain pickle: recsys reads it with an allow-list."""
    file, marker = saved["path"] / ".metadata", tmp_path / "payload_ran"
    metadata = pickle.loads(file.read_bytes())
    metadata.planner_data = _Payload(marker)  # any field: the payload runs as it is read
    file.write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(file))}: refused GLOBAL .*mkdir"):
        _load(saved)
    assert not marker.exists()
    pickle.loads(file.read_bytes())  # the payload is live: DCP's own pickle.load runs it
    assert marker.exists()


def test_a_truncated_trainer_state_names_the_file(saved) -> None:
    file = saved["path"] / STATE_FILE
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(file))}.*truncated or corrupted"):
        _load(saved)


@pytest.mark.parametrize(
    ("version", "advice"),
    [(FORMAT_VERSION + 1, "is newer .* Upgrade recsys"), (1, "is older .* trainer.warm_start=")],
)
def test_another_format_version_is_refused_with_what_to_do(saved, version, advice) -> None:
    meta_file = saved["path"] / META_FILE
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format_version": version}))
    with pytest.raises(
        CheckpointError, match=f"{re.escape(str(meta_file))}: checkpoint format v{version} {advice}"
    ):
        _load(saved)
