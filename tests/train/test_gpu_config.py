"""trainer=gpu: composes on any machine, fails clearly without CUDA, trains where there is one."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from recsys.compose import load_config
from recsys.config import ConfigError
from recsys.train.recipe import run
from recsys.train.steppers import uses_pipeline
from tests.synthetic import TinyLog

REPO = Path(__file__).resolve().parents[2]


def test_trainer_gpu_differs_from_cpu_only_in_device_settings() -> None:
    gpu, cpu = asdict(load_config(["trainer=gpu"]).trainer), asdict(load_config([]).trainer)
    assert {k for k in gpu if gpu[k] != cpu[k]} == {"device", "pin_memory"}
    assert gpu["device"] == "cuda" and gpu["pin_memory"] and gpu["pipeline"] is None
    assert uses_pipeline(torch.device("cuda"), world_size=1)  # pipeline=null on a GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_trainer_gpu_without_cuda_is_a_clear_error(tiny_log: TinyLog, tmp_path: Path) -> None:
    overrides = tiny_log.overrides + ["trainer=gpu", "tracking=none"]
    with pytest.raises(ConfigError, match="no CUDA device is visible; use trainer=cpu"):
        run(load_config(overrides, output_dir=str(tmp_path / "o")))
    # The command a user types: exit status 2 and one line that says what to do, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli.train", *overrides, f"hydra.run.dir={tmp_path}/cli"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    output = proc.stdout + proc.stderr  # Hydra's log handler writes to stdout
    assert proc.returncode == 2, output[-2000:]
    assert "trainer.device=cuda but no CUDA device is visible; use trainer=cpu" in output
    assert "Traceback" not in output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trainer_gpu_trains_with_fused_adam_on_cuda(tiny_log: TinyLog, tmp_path: Path) -> None:
    overrides = tiny_log.overrides + [
        "trainer=gpu",
        "tracking=none",
        "trainer.sparse_optimizer=adam",
    ]
    result = run(load_config(overrides, output_dir=str(tmp_path / "o")))
    assert result.metrics["eval/auc"] > 0.6
    plan = (tmp_path / "o" / "sharding_plan.txt").read_text()
    assert "cuda" in plan and "fused" in plan.lower(), plan
