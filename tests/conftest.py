"""Shared fixtures: seeds, tiny click logs and three tiny trained days."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from tests.synthetic import TinyLog, write_tiny_log

if TYPE_CHECKING:
    from tests.days import Days


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def tiny_log(tmp_path: Path) -> TinyLog:
    return write_tiny_log(tmp_path)


@pytest.fixture(scope="session")
def trained_days(tmp_path_factory: pytest.TempPathFactory) -> Days:
    """Three tiny days trained by `run_days` with their exports and delta exports (read-only:
    copy a folder before editing it)."""
    from tests.days import train_days  # imports torchrec: only where a test asks for it

    return train_days(tmp_path_factory.mktemp("days"))
