"""The first-order stage (`trainer.first_order_stage`): the wide part first, then the whole.

Trained jointly, a deep model's embeddings can overfit within two epochs while its per-id
biases would still gain for several more: early stopping then keeps an epoch where the biases
are half-trained, and a hashed logistic regression on the same tables beats the deep model.
So the stage trains the first-order terms alone first (`model=lr` on the very same tables and
trainer settings, to its best validated step), and the whole model then starts from those
biases, which move on at `first_order_lr` (null: sparse_lr / 10) while the rest learns what
they left. Validation AUC, mean of seeds 0-2, without -> with the stage: synthetic pairwise
0.7388 -> 0.7495, a planted Avazu-layout log 0.8703 -> 0.8780 (its LR 0.8724), MovieLens
0.7930 -> 0.7958, adult 0.8988 -> 0.9002, synthetic first_order and cold start within noise
(README).

The stage is a run of its own under `<output_dir>/first_order_stage/`, set up and trained
only (no tracking, final evaluation, export or plots), with its dense lr
`trainer.first_order_stage_lr`. The whole model warm-starts from its final, best, checkpoint:
the bias tables and the dense features' linear term are copied, the deep part's logit layer
starts at zero (recsys.train.warm_start), so the whole model starts as the LR; its start is
validated, and early stopping keeps it if training never beats it on validation.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.config import ModelName, TrainConfig
from recsys.distributed.env import launch_rank
from recsys.train.best import BEST_DIR
from recsys.train.checkpoint_layout import CHECKPOINTS_DIR, find_latest, resolve_checkpoint

log = logging.getLogger(__name__)

STAGE_DIR = "first_order_stage"
STAGE_DONE_FILE = "done"  # written when the stage ends: its last checkpoint is then final
FIRST_ORDER_LR_AFTER_STAGE = 0.1  # x sparse_lr, when trainer.first_order_lr is null


def wants_first_order_stage(cfg: TrainConfig) -> bool:
    """The stage runs before a fresh run of a model with more than first-order terms and bias
    tables of its own: a resumed or warm-started run already has its biases, and biases in the
    embedding rows (model.bias_in_rows) or none (model.first_order=false) leave nothing to train
    apart."""
    trainer, model = cfg.trainer, cfg.model
    fresh = trainer.resume is None and trainer.warm_start is None
    own_biases = model.first_order and not model.bias_in_rows
    return trainer.first_order_stage and fresh and own_biases and model.name is not ModelName.lr


def stage_config(cfg: TrainConfig) -> TrainConfig:
    """The stage's run: `model=lr` on the same tables (same dim, so the tables carry over),
    the same data and trainer but for the dense lr (`trainer.first_order_stage_lr`) and
    epoch-end checkpoints (always on), untracked and not exported, in its own folder."""
    stage = copy.deepcopy(cfg)
    stage.model.name = ModelName.lr
    stage.model.dropout = 0.0
    stage.trainer.first_order_stage = False
    stage.trainer.lr = cfg.trainer.first_order_stage_lr or cfg.trainer.lr
    # Its final checkpoint is the whole model's start, whatever the run's own checkpoint
    # settings (make tune's trials turn epoch-end checkpoints off).
    stage.trainer.checkpoint.at_epoch_end = True
    stage.tracking.enabled = False
    stage.export.enabled = False
    stage.output_dir = str(Path(cfg.output_dir) / STAGE_DIR)
    return stage


def after_stage(cfg: TrainConfig, stage_dir: Path) -> TrainConfig:
    """The whole model's run, warm-started from the stage's final checkpoint."""
    whole = copy.deepcopy(cfg)
    whole.trainer.warm_start = str(stage_dir)
    if whole.trainer.first_order_lr is None:
        whole.trainer.first_order_lr = FIRST_ORDER_LR_AFTER_STAGE * cfg.trainer.sparse_lr
    return whole


def before_the_run(cfg: TrainConfig, train: Callable[[TrainConfig], Any]) -> TrainConfig:
    """The config of the run proper, after its first-order stage when it has one.

    A resume that lands in a stage (`trainer.resume` is, or `latest` finds, a checkpoint under
    `<run>/first_order_stage/`: the run was stopped before the whole model's first checkpoint)
    resumes the stage there and then starts the whole model from it; a stage that had
    finished is not trained again."""
    stage_checkpoint = _resumed_stage_checkpoint(cfg)
    if stage_checkpoint is None:
        return run_first_order_stage(cfg, train) if wants_first_order_stage(cfg) else cfg
    fresh = copy.deepcopy(cfg)
    fresh.trainer.resume = None
    stage_dir = stage_checkpoint.parent.parent
    if (stage_dir / STAGE_DONE_FILE).is_file():
        if launch_rank() == 0:
            log.info("resume: %s finished its first-order stage; the whole model starts "
                     "from it again", stage_dir.parent)  # fmt: skip
        return after_stage(fresh, stage_dir)
    return run_first_order_stage(fresh, train, resume=stage_checkpoint)


def _resumed_stage_checkpoint(cfg: TrainConfig) -> Path | None:
    """The stage checkpoint `trainer.resume` resolves to, if it is one. A run folder with
    no checkpoint of its own resolves to its stage's newest."""
    spec = cfg.trainer.resume
    if spec is None:
        return None
    search_dir = Path(cfg.trainer.checkpoint.search_dir)
    own = Path(spec) / CHECKPOINTS_DIR
    if spec != "latest" and not own.is_dir() and (Path(spec) / STAGE_DIR).is_dir():
        spec = str(Path(spec) / STAGE_DIR)
    checkpoint = resolve_checkpoint(spec, search_dir)
    return checkpoint if checkpoint.parent.parent.name == STAGE_DIR else None


def run_first_order_stage(
    cfg: TrainConfig, train: Callable[[TrainConfig], Any], resume: Path | None = None
) -> TrainConfig:
    """Train the stage with `train` (recsys.train.recipe._train_stage), from `resume` if
    given, and return the config of the whole model's run that follows it."""
    stage = stage_config(cfg)
    stage.trainer.resume = None if resume is None else str(resume)
    on_main = launch_rank() == 0  # torchrun: every rank trains the stage
    if on_main:
        resumed = "" if resume is None else f", resumed from {resume}"
        log.info("first-order stage: the per-id biases alone, under %s%s", stage.output_dir,
                 resumed)  # fmt: skip
    result = train(stage)
    if on_main:
        (Path(stage.output_dir) / STAGE_DONE_FILE).write_text(f"{result.steps}\n")
        log.info(
            "first-order stage done after %d steps (%s); the whole model starts from its tables "
            "(its dense part, another head than the stage's, starts fresh but for the linear "
            "term of the dense features)",
            result.steps, result.stop_reason or "ran to trainer.epochs",
        )  # fmt: skip
    stage_dir = Path(stage.output_dir)
    # Resumed at its end, the stage trains no step and writes no checkpoint of its own.
    ended_at = resume if resume is not None and find_latest(stage_dir) is None else stage_dir
    return after_stage(cfg, ended_at)


def discard_stage_checkpoints(cfg: TrainConfig) -> None:
    """After a run that keeps no checkpoints of its own (make tune's trials), remove its
    stage's too: they were there for the whole model to start from, and are as large as its
    tables (a tune on 26 default tables kept 1-4 GB a trial). Runs that keep checkpoints keep
    the stage's, so a stopped run resumes (`before_the_run`). Rank 0, after the run."""
    if cfg.trainer.checkpoint.writes_any or launch_rank() != 0:
        return
    stage_dir = Path(cfg.output_dir) / STAGE_DIR
    for name in (CHECKPOINTS_DIR, BEST_DIR):
        shutil.rmtree(stage_dir / name, ignore_errors=True)
