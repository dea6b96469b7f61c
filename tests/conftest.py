"""Shared fixtures: seeds and tiny click logs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.synthetic import TinyLog, write_tiny_log


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def tiny_log(tmp_path: Path) -> TinyLog:
    return write_tiny_log(tmp_path)
