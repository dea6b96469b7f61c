"""The first-order stage (trainer.first_order_stage): the biases alone first, then the whole
model from them."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from recsys.compose import load_config
from recsys.config import ModelName
from recsys.train.recipe import TrainRecipe, run
from recsys.train.stages import (
    FIRST_ORDER_LR_AFTER_STAGE,
    STAGE_DIR,
    STAGE_DONE_FILE,
    after_stage,
    stage_config,
    wants_first_order_stage,
)
from tests.synthetic import TinyLog


def _cfg(tmp_path: Path, *overrides: str):
    return load_config([*overrides, "trainer.first_order_stage=true"], output_dir=str(tmp_path))


def test_the_stage_is_an_untracked_lr_run_on_the_same_tables(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "model.embedding_dim=8")
    stage = stage_config(cfg)
    assert stage.model.name is ModelName.lr and stage.model.embedding_dim == 8  # tables carry over
    assert stage.trainer.checkpoint.at_epoch_end  # its last checkpoint is the whole model's start
    assert not stage.tracking.enabled and not stage.export.enabled
    assert not stage.trainer.first_order_stage and stage.output_dir == str(tmp_path / STAGE_DIR)
    assert cfg.model.name is ModelName.dlrm and cfg.tracking.enabled  # the caller's untouched
    assert (stage.trainer.lr, cfg.trainer.lr) == (cfg.trainer.first_order_stage_lr, 0.001)
    unset = stage_config(_cfg(tmp_path, "trainer.first_order_stage_lr=null", "trainer.lr=0.003"))
    assert unset.trainer.lr == 0.003
    whole = after_stage(cfg, tmp_path / STAGE_DIR)
    assert whole.trainer.warm_start == str(tmp_path / STAGE_DIR)
    assert whole.trainer.first_order_lr == pytest.approx(
        FIRST_ORDER_LR_AFTER_STAGE * cfg.trainer.sparse_lr
    )
    assert (
        after_stage(_cfg(tmp_path, "trainer.first_order_lr=0.05"), tmp_path).trainer.first_order_lr
        == 0.05
    )


def test_only_a_fresh_run_of_a_model_beyond_lr_has_a_stage(tmp_path: Path) -> None:
    assert wants_first_order_stage(_cfg(tmp_path))
    assert not wants_first_order_stage(_cfg(tmp_path, "model=lr"))
    assert not wants_first_order_stage(_cfg(tmp_path, "trainer.warm_start=somewhere"))
    assert not wants_first_order_stage(_cfg(tmp_path, "trainer.resume=latest"))
    assert wants_first_order_stage(load_config([], output_dir=str(tmp_path)))  # the default
    off = load_config(["trainer.first_order_stage=false"], output_dir=str(tmp_path))
    assert not wants_first_order_stage(off)
    assert not wants_first_order_stage(_cfg(tmp_path, "model.bias_in_rows=true"))
    assert not wants_first_order_stage(_cfg(tmp_path, "model.first_order=false"))


def test_the_whole_model_starts_from_the_stages_best_biases(
    tiny_log: TinyLog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = tiny_log.overrides + ["tracking=none", "export.enabled=false", "trainer.epochs=2"]
    with caplog.at_level(logging.INFO, logger="recsys"):
        result = run(_cfg(tmp_path / "run", *overrides))
    stage = tmp_path / "run" / STAGE_DIR
    assert sorted(p.name for p in (stage / "checkpoints").iterdir())  # the stage's own run
    warm = [m.getMessage() for m in caplog.records if m.name == "recsys.train.warm_start"]
    started = [m for m in warm if m.startswith("warm start from")]
    # every table carried over (the same dim), the dense head (DLRM's, not LR's) fresh
    assert len(started) == 1 and str(stage) in started[0] and "dense part fresh" in started[0]
    assert "kept fresh" not in started[0]
    # ... but for the dense features' linear term, and with its logit layer zeroed: the whole
    # model starts as the stage's LR, which its first validation (step 0) shows.
    assert "first-order term copied" in started[0] and "logit layer zeroed" in started[0]
    warned = [m for m in caplog.records if m.name == "recsys.train.warm_start" and m.levelno > 20]
    assert not warned  # the fresh head is the intent here, not a mismatch to warn of
    messages = [m.getMessage() for m in caplog.records]
    stage_done = next(i for i, m in enumerate(messages) if "first-order stage done" in m)
    stage_aucs = [re.search(r"epoch \d+: step \d+, valid AUC ([0-9.]+)", m) for m in messages]
    stage_auc = max(float(m.group(1)) for m in stage_aucs[:stage_done] if m)
    validations = [(int(h["step"]), h["valid/auc"]) for h in result.history if "valid/auc" in h]
    assert validations[0][0] == 0 and validations[0][1] == pytest.approx(
        stage_auc, abs=6e-5
    )  # logged to 4 places
    assert result.output_dir == tmp_path / "run" and 0.5 < result.metrics["eval/auc"] <= 1.0
    assert not (tmp_path / "run" / STAGE_DIR / STAGE_DIR).exists()  # one stage, not a chain


def test_the_stage_checkpoints_even_when_the_run_does_not(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    # make tune's trials turn epoch-end checkpoints off; the stage's last one is the handoff
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [*tiny_log.overrides, f"tracking.uri={uri}", "tracking.register_as=null",
                 "tracking.experiment=stage", "export.enabled=false", "trainer.epochs=1"]  # fmt: skip
    result = run(_cfg(tmp_path / "run", *overrides, "trainer.checkpoint.at_epoch_end=false"))
    # it trained from the stage's checkpoint (else CheckpointError), which then went with the
    # run's own setting: a tune's trials would keep GBs of them otherwise
    assert (tmp_path / "run" / STAGE_DIR / STAGE_DONE_FILE).is_file()
    assert not (tmp_path / "run" / STAGE_DIR / "checkpoints").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()  # the run's own setting still holds
    assert 0.5 < result.metrics["eval/auc"] <= 1.0
    assert (
        f"start    the first-order stage's LR ({tmp_path / 'run' / STAGE_DIR}" in result.summary()
    )
    # The run's params are its config as asked for; the warm start from the stage is a tag.
    client = MlflowClient(uri)
    (tracked,) = client.search_runs([client.get_experiment_by_name("stage").experiment_id])
    params, tags = tracked.data.params, tracked.data.tags
    assert params["trainer.warm_start"] == "None" and params["trainer.first_order_lr"] == "None"
    assert tags["warm_started_from"].startswith(str(tmp_path / "run" / STAGE_DIR))


def test_a_run_stopped_in_or_after_its_stage_resumes_to_the_same_model(
    tiny_log: TinyLog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = tmp_path / "runs"
    overrides = [*tiny_log.overrides, "tracking=none", "export.enabled=false", "trainer.epochs=2",
                 f"trainer.checkpoint.search_dir={runs}"]  # fmt: skip
    whole = run(_cfg(runs / "a", *overrides))
    stage = runs / "a" / STAGE_DIR
    # Stopped after its stage, before the whole model's first checkpoint: the finished stage
    # is not trained again (resume names the run folder).
    shutil.rmtree(runs / "a" / "checkpoints")
    with caplog.at_level(logging.INFO, logger="recsys.train.stages"):
        after = run(_cfg(runs / "b", *overrides, f"trainer.resume={runs / 'a'}"))
    assert "finished its first-order stage" in caplog.text and not (runs / "b" / STAGE_DIR).exists()
    assert after.metrics["eval/auc"] == pytest.approx(whole.metrics["eval/auc"], abs=1e-6)
    # Stopped inside its stage, after its first epoch: `latest` is the stage's checkpoint, and
    # the stage goes on from there (it used to resume the whole model from the LR: a DCP error).
    shutil.rmtree(runs / "b")  # else `latest` is its checkpoint
    (stage / STAGE_DONE_FILE).unlink()
    shutil.rmtree(max((stage / "checkpoints").iterdir(), key=lambda p: p.stat().st_mtime))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recsys.train.stages"):
        inside = run(_cfg(runs / "c", *overrides, "trainer.resume=latest"))
    assert f"resumed from {stage / 'checkpoints'}" in caplog.text
    assert inside.metrics["eval/auc"] == pytest.approx(whole.metrics["eval/auc"], abs=1e-6)
    assert inside.steps == whole.steps


def test_a_failed_stage_leaves_no_process_group(
    tiny_log: TinyLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stage keeps its process group for the run that follows; when it fails, none follows.
    original = TrainRecipe.train

    def train(self: TrainRecipe) -> None:
        if Path(self.cfg.output_dir).name == STAGE_DIR:
            raise RuntimeError("the stage failed")
        original(self)

    monkeypatch.setattr(TrainRecipe, "train", train)
    overrides = [*tiny_log.overrides, "tracking=none", "export.enabled=false", "trainer.epochs=1"]
    with pytest.raises(RuntimeError, match="the stage failed"):
        run(_cfg(tmp_path / "run", *overrides))
    assert not torch.distributed.is_initialized()
