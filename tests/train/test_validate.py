"""`validate(cfg)`: every value checked before a run starts, errors naming key and fix.

Typos in a choice fail already when the config composes (each choice is a StrEnum); ranges
and combinations fail in `validate`. Neither builds a model, a process group or a folder.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from recsys.compose import explain, load_config
from recsys.config import ConfigError, ModelConfig, ModelName, TrainConfig, TrainerConfig
from recsys.model.registry import ARCHITECTURES, head_config
from recsys.schema import resolve_schema
from recsys.train.validate import validate


@pytest.mark.parametrize("model", [m.value for m in ModelName])
def test_default_configs_validate_and_give_the_schema(model: str) -> None:
    cfg = load_config([f"model={model}"])
    assert validate(cfg) == resolve_schema(cfg.data, cfg.model.embedding_dim)


def test_model_names_are_the_registry_architectures() -> None:
    assert set(ModelName) == set(ARCHITECTURES)
    for name, architecture in ARCHITECTURES.items():
        assert architecture.config.architecture == name  # the name an export is rebuilt by


@pytest.mark.parametrize(
    ("override", "key", "valid"),
    [
        ("trainer.lr_schedule.decay=cosin", "trainer.lr_schedule.decay", "cosine"),
        ("trainer.early_stopping.metric=aucc", "trainer.early_stopping.metric", "log_loss"),
        ("sharding.type=rowwise", "sharding.type", "row_wise"),
        ("trainer.optimizer=adamm", "trainer.optimizer", "adamw"),
        ("trainer.sparse_optimizer=adagrd", "trainer.sparse_optimizer", "rowwise_adagrad"),
        ("model.name=dlrmm", "model.name", "dlrm"),
        ("model.structure=stack", "model.structure", "stacked"),
        ("trainer.device=gpux", "trainer.device", "cuda"),
        ("trainer.device=gpu", "trainer.device", "cuda"),
        ("data.format=parq", "data.format", "parquet"),
        ("data.holdout.by=tial", "data.holdout.by", "tail, hash"),
        ("model=dlrmm", "model", "dcn, dlrm, fm, lr, mf"),
    ],
)
def test_typo_in_a_choice_fails_at_composition(override: str, key: str, valid: str) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        load_config([override])
    message = explain(info.value)
    assert key in message and valid in message, message


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["trainer.epochs=0"], r"trainer\.epochs=0: must be >= 1"),
        (["trainer.max_steps=-1"], r"trainer\.max_steps=-1"),
        (["trainer.batch_size=0"], r"trainer\.batch_size=0"),
        (["trainer.eval_batch_size=0"], r"trainer\.eval_batch_size=0"),
        (["trainer.log_every_n_steps=0"], r"trainer\.log_every_n_steps=0"),
        (["trainer.eval_every_n_steps=0"], r"trainer\.eval_every_n_steps=0: .*or null"),
        (["trainer.checkpoint.every_n_steps=0"], r"trainer\.checkpoint\.every_n_steps=0"),
        (["trainer.checkpoint.keep_last=0"], r"trainer\.checkpoint\.keep_last=0"),
        (["trainer.lr=0"], r"trainer\.lr=0.0: must be > 0"),
        (["trainer.sparse_lr=-1"], r"trainer\.sparse_lr=-1"),
        (["trainer.first_order_lr=0"], r"trainer\.first_order_lr=0"),
        (["trainer.weight_decay=-0.1"], r"trainer\.weight_decay=-0.1"),
        (["trainer.embedding_l2=-1e-5"], r"trainer\.embedding_l2=-1e-05"),
        (["trainer.first_order_adagrad_beta=-1"], r"trainer\.first_order_adagrad_beta=-1"),
        # FBGEMM's CPU kernels take a weight decay and never apply it: refused, not ignored.
        (
            ["trainer.sparse_weight_decay=1e-5"],
            r"trainer\.sparse_weight_decay=1e-05: .*embedding_l2",
        ),
        (["model=lr", "model.first_order=false"], r"model=lr .*model\.first_order=true"),
        (["model=fm", "data.tables.genres.embedding_dim=8"], r"model=fm .*embedding_dim=16"),
        (["trainer.betas=[0.9]"], r"trainer\.betas=\[0\.9\]"),
        (["trainer.betas=[0.9,1.0]"], r"trainer\.betas=\[0\.9, 1\.0\]"),
        (["trainer.early_stopping.patience=-1"], r"trainer\.early_stopping\.patience=-1"),
        (["trainer.early_stopping.min_delta=-0.1"], r"trainer\.early_stopping\.min_delta"),
        (["trainer.lr_schedule.warmup_steps=-1"], r"trainer\.lr_schedule\.warmup_steps=-1"),
        (["trainer.lr_schedule.decay_steps=0"], r"trainer\.lr_schedule\.decay_steps=0"),
        (["trainer.lr_schedule.min_lr_ratio=1.5"], r"trainer\.lr_schedule\.min_lr_ratio=1.5"),
        (["trainer.lr_schedule.step_gamma=0"], r"trainer\.lr_schedule\.step_gamma=0"),
        (["trainer.lr_schedule.step_every=0"], r"trainer\.lr_schedule\.step_every=0"),
        (["trainer.sparse_optimizer=adam"], r"trainer\.sparse_optimizer=adam: .*no fused Adam"),
        (["data.eval_path=null"], r"data\.eval_path is not set"),
        (["data.holdout.fraction=1"], r"data\.holdout\.fraction=1.0: need 0 <= fraction < 1"),
        (["data.holdout.fraction=-0.1"], r"data\.holdout\.fraction=-0.1"),
        (["data.holdout.seed=-1"], r"data\.holdout\.seed=-1"),
        (["model.embedding_dim=0"], r"model\.embedding_dim=0"),
        (["model.dropout=1.0"], r"model\.dropout=1\.0"),
        (["model.over_arch=[64,0]"], r"model\.over_arch=\[64, 0\]"),
        (["model=dcn", "model.low_rank=0"], r"model\.low_rank=0"),
        (["model=dcn", "model.cross_layers=-1"], r"model\.cross_layers=-1"),
        (["model=mf", "data.features.genres.tower=null"], r"data\.features\.genres\.tower"),
        (["data.tables.genres.num_buckets=1"], r"num_buckets=1"),
        (["trainer.resume=/no/such/run"], r"trainer\.resume=/no/such/run: no such folder"),
        (["trainer.warm_start=/no/such/export"], r"trainer\.warm_start=/no/such/export"),
    ],
)
def test_bad_value_names_the_key(overrides: list[str], match: str) -> None:
    cfg = load_config(overrides)  # composes: the type is right, the value is not
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_days_on_a_single_run_points_to_train_days(tmp_path: Path) -> None:
    """A plain run would train data.train_path and ignore the days: refused, naming the
    command that trains them (whose per-day runs drop data.days: tests/train/test_days.py)."""
    cfg = load_config([f"data.days='{tmp_path}/day=*'"])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert f"data.days={tmp_path}/day=*" in message
    assert f"make train-days ARGS='data.days={tmp_path}/day=*'" in message
    validate(replace(cfg, data=replace(cfg.data, days=None)))


def test_resume_and_warm_start_together(tmp_path: Path) -> None:
    cfg = load_config([f"trainer.resume={tmp_path}", f"trainer.warm_start={tmp_path}"])
    with pytest.raises(ConfigError, match=r"trainer\.resume and trainer\.warm_start"):
        validate(cfg)
    validate(load_config(["trainer.resume=latest"]))  # resolved later, among the runs


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_visible_device() -> None:
    with pytest.raises(ConfigError, match="trainer.device=cuda but no CUDA device is visible"):
        validate(load_config(["trainer=gpu"]))


@pytest.mark.parametrize(
    ("trainer", "match"),
    [
        (TrainerConfig(optimizer="lamb"), r"trainer\.optimizer='lamb'.*'adamw'"),
        (TrainerConfig(device="gpu"), r"trainer\.device='gpu'.*\['cpu', 'cuda'\]"),
        (TrainerConfig(sparse_optimizer="adam2"), r"trainer\.sparse_optimizer='adam2'"),
    ],
)
def test_choices_of_configs_built_in_python(trainer: TrainerConfig, match: str) -> None:
    """Hydra checks choices only when it composes; validate checks them however made."""
    cfg = replace(load_config([]), trainer=trainer)
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_choice_inside_a_feature_spec() -> None:
    cfg = load_config([])
    cfg.data.features["genres"].kind = "idlist"
    with pytest.raises(ConfigError, match=r"data\.features\.genres\.kind='idlist'.*id_list"):
        validate(cfg)


def test_unknown_model_name_lists_the_registry() -> None:
    cfg = load_config([])
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    with pytest.raises(
        ConfigError, match=r"model\.name='ffm'.*\['dcn', 'dlrm', 'fm', 'lr', 'mf'\]"
    ):
        head_config(schema, ModelConfig(name="ffm"))
    with pytest.raises(ConfigError, match=r"model\.name='ffm'"):
        validate(replace(cfg, model=ModelConfig(name="ffm")))


def test_validate_is_pure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg: TrainConfig = load_config(["tracking.uri=sqlite:///mlruns.db"], output_dir="out")
    validate(cfg)
    assert os.listdir(tmp_path) == []  # no output folder, no tracking store
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.bias_in_rows=true", "model.first_order=false"],
            "model.first_order=false has none",
        ),
        (["model.bias_in_rows=true", "trainer.first_order_lr=0.05"], "trainer.first_order_lr=0.05"),
    ],
)
def test_biases_in_rows_refuse_what_needs_bias_tables(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(load_config(overrides))
