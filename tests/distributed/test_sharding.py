"""Sparse optimizer choices and sharding types map onto TorchRec's (errors: test_validate)."""

from __future__ import annotations

import pytest
import torch
from torchrec.distributed.types import ShardingType as TorchrecShardingType
from torchrec.optim import RowWiseAdagrad

from recsys.config import ShardingType, SparseOptimizer, TrainerConfig
from recsys.distributed.sharding import _SPARSE_OPTIMIZERS, attach_sparse_optimizer


def test_every_forced_sharding_type_is_a_torchrec_type() -> None:
    forced = [t.value for t in ShardingType if t is not ShardingType.auto]
    assert forced and all(TorchrecShardingType(v).value == v for v in forced)


def test_every_sparse_optimizer_has_a_kernel() -> None:
    assert set(_SPARSE_OPTIMIZERS) == set(SparseOptimizer)


@pytest.mark.parametrize("name", [SparseOptimizer.rowwise_adagrad, "rowwise_adagrad"])
def test_supported_sparse_optimizer_attaches_in_backward(name: str) -> None:
    tables = torch.nn.Embedding(5, 4)  # row-wise Adagrad needs 2-D (row, column) weights
    attach_sparse_optimizer(tables, TrainerConfig(sparse_optimizer=name), lr=0.1)
    assert all(p._optimizer_classes == [RowWiseAdagrad] for p in tables.parameters())
    assert all(p._optimizer_kwargs[0]["lr"] == 0.1 for p in tables.parameters())
