"""Sparse optimizer choices: clear errors for what the CPU kernels cannot do."""

from __future__ import annotations

import pytest
import torch
from torchrec.optim import RowWiseAdagrad

from recsys.config import ConfigError, TrainerConfig
from recsys.distributed.sharding import attach_sparse_optimizer


@pytest.mark.parametrize(("name", "match"), [("adam", "no fused Adam"), ("lamb", "choose one of")])
def test_unsupported_sparse_optimizer_is_a_config_error(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        attach_sparse_optimizer(torch.nn.Linear(2, 2), TrainerConfig(sparse_optimizer=name), lr=0.1)


def test_supported_sparse_optimizer_attaches_in_backward() -> None:
    tables = torch.nn.Embedding(5, 4)  # row-wise Adagrad needs 2-D (row, column) weights
    attach_sparse_optimizer(tables, TrainerConfig(sparse_optimizer="rowwise_adagrad"), lr=0.1)
    assert all(p._optimizer_classes == [RowWiseAdagrad] for p in tables.parameters())
    assert all(p._optimizer_kwargs[0]["lr"] == 0.1 for p in tables.parameters())
