"""The real Hydra config composes for every group option, and bad keys fail helpfully."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsys.cli.overrides import check_overrides
from recsys.compose import conf_dir, load_config
from recsys.config import (
    Device,
    TrainConfig,
)
from recsys.train.validate import validate

GROUPS = ["data", "model", "trainer", "tracking", "sharding"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(conf_dir()) / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_to_typed_config(group: str, option: str) -> None:
    cfg = load_config([f"{group}={option}"])
    assert isinstance(cfg, TrainConfig)
    if cfg.trainer.device == Device.cuda and not torch.cuda.is_available():
        cfg.trainer.device = Device.cpu  # trainer=gpu: every other value is checked here too
    schema = validate(cfg)
    assert schema.sparse_features, "every data config must declare sparse features"
    assert all(t.num_buckets >= 2 for t in schema.tables)


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert _options(group), f"conf/{group}/ is empty"


def test_override_reaches_typed_config() -> None:
    cfg = load_config(
        ["trainer.lr=0.5", "model.embedding_dim=8", "data.tables.genres.num_buckets=99"]
    )
    assert cfg.trainer.lr == 0.5
    assert cfg.model.embedding_dim == 8
    assert cfg.data.tables["genres"].num_buckets == 99


def test_misspelt_key_names_valid_keys() -> None:
    message = check_overrides(["trainer.lrr=0.1"])
    assert message is not None
    assert "trainer.lrr" in message and "batch_size" in message and "lr," in message


def test_misspelt_group_level_key() -> None:
    message = check_overrides(["traner.lr=0.1"])
    assert message is not None and "trainer" in message


def test_valid_overrides_pass_check() -> None:
    assert (
        check_overrides(
            [
                "data=movielens",
                "trainer.lr=1",
                "data.features.user_id.seed=3",
                "+foo=1",
                "hydra.run.dir=x",
            ]
        )
        is None
    )


def test_cli_rejects_misspelt_key_with_exit_code_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli.train", "trainer.epochz=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "epochz" in proc.stderr and "epochs" in proc.stderr


def test_wrong_type_is_rejected_by_hydra() -> None:
    with pytest.raises(Exception, match="batch_size"):
        load_config(["trainer.batch_size=lots"])


def test_cli_missing_data_says_how_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.parquet"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli.train",
            f"data.train_path={missing}",
            "tracking=none",
            f"hydra.run.dir={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert str(missing) in output and "recsys-data movielens" in output
    assert "Traceback" not in output
