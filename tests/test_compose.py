"""`recsys.compose`: configs load from conf/ (and a user's folder) as the CLI composes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from recsys.compose import conf_dir, explain, load_config
from recsys.config import ConfigError, Device, TrainConfig


def test_conf_dir_holds_the_primary_config() -> None:
    assert (Path(conf_dir()) / "train.yaml").is_file()


def test_load_config_gives_typed_config_with_enum_choices() -> None:
    cfg = load_config(["trainer=gpu"], output_dir="somewhere")
    assert isinstance(cfg, TrainConfig) and cfg.output_dir == "somewhere"
    assert cfg.trainer.device is Device.cuda  # conf/trainer/gpu.yaml says device: cuda


def test_user_config_dir_adds_group_options(tmp_path: Path) -> None:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "quick.yaml").write_text("defaults:\n  - cpu\n  - _self_\nepochs: 1\n")
    assert load_config(["trainer=quick"], config_dir=str(tmp_path)).trainer.epochs == 1
    with pytest.raises(HydraException) as info:
        load_config(["trainer=quick"])
    assert "trainer/quick" in explain(info.value) and "cpu, gpu" in explain(info.value)
    with pytest.raises(ConfigError, match="--config-dir"):
        load_config([], config_dir=str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("+data.features.extra={kind: id, seed: 3}", "data.features"),
        ("+data.tables.extra.num_buckets=64", "data.tables"),
    ],
)
def test_a_new_feature_or_table_by_override_says_where_to_add_it(override: str, where: str) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        load_config([override])
    message = explain(info.value)
    assert message.startswith("extra: ")
    assert f"A new entry of {where} cannot be added by an override" in message
    assert "--config-dir" in message and f"{where}.<name>.<key>=VALUE" in message


def test_an_experiment_missing_from_the_search_path_is_an_error(tmp_path: Path) -> None:
    # Hydra adds `+experiment=best` as a plain value when no experiment/best.yaml is found,
    # and the run trained the defaults (a sweep folder before its sweep finished, a typo).
    with pytest.raises(ConfigError, match=r"no experiment/best.yaml .* --config-dir"):
        load_config(["+experiment=best"], config_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown top-level keys"):
        load_config(["+epochs=3"])  # meant trainer.epochs
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "best.yaml").write_text("# @package _global_\ntrainer:\n  lr: 0.5\n")
    assert load_config(["+experiment=best"], config_dir=str(tmp_path)).trainer.lr == 0.5
