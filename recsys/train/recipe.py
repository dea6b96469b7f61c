"""The training recipe: one run as named steps, torchtune-style.

    setup      process group, seeds, data streams, the sharded model and its optimizers,
               resume or warm start, the tracker, the checkpointer
    train      epochs of steps; between steps: validation and early stopping that ends with
               the best validated model (recsys.train.monitor, recsys.train.best), checkpoints
    evaluate   the final evaluation on data.eval_path, and the predictions file (every rank
               writes its rows' part; rank 0 merges them)
    export     the serving export (every rank takes part; rank 0 writes)
    plots      the run's figures as tracked artifacts (rank 0)
    finish     stops what setup started (tracker, process group), whatever ended the run

`run(cfg)` validates the whole config first (nothing is built, opened or written before),
then runs the steps and returns a `TrainResult`. Every rank runs this same code; only rank 0
prints, tracks and writes the export and the predictions.
"""

from __future__ import annotations

import logging
import traceback
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from recsys.config import TrainConfig
from recsys.data.progress import EpochProgress
from recsys.data.source import SourceFormat
from recsys.distributed.env import init_distributed, shutdown_distributed
from recsys.distributed.gather import broadcast_object, export_group, local_shards
from recsys.export.measure import export_metrics
from recsys.export.writer import exported_tables, write_export
from recsys.schema import Schema
from recsys.tracking import NullTracker, Tracker, open_tracker
from recsys.train.best import BestModel
from recsys.train.build import build_training, check_validation, datasets
from recsys.train.checkpoint import Checkpointer, ResumePoint, load_checkpoint, save_checkpoint
from recsys.train.checkpoint_layout import resolve_checkpoint
from recsys.train.evaluator import Evaluation, evaluate
from recsys.train.loop import Epoch, TrainJob, TrainState
from recsys.train.monitor import ValidationHook, ValidationMonitor, best_model
from recsys.train.optim import LRScheduler, estimated_total_steps
from recsys.train.plots import collision_stats, run_figures
from recsys.train.record import RunMetrics, provenance, record_start
from recsys.train.remap_state import load_expiry
from recsys.train.result import TrainResult
from recsys.train.seeding import configure_determinism, seed_everything
from recsys.train.stages import before_the_run, discard_stage_checkpoints
from recsys.train.validate import validate
from recsys.train.warm_start import WarmStartReport, warm_start

log = logging.getLogger(__name__)


def run(cfg: TrainConfig, on_validation: ValidationHook | None = None) -> TrainResult:
    """Train, evaluate and export as `cfg` says; joins torchrun's process group if there is one."""
    schema = validate(cfg)  # before any side effect: a bad value leaves nothing behind
    requested = cfg
    cfg = before_the_run(cfg, _train_stage)  # the first-order stage, when it has one
    with TrainRecipe(cfg, schema, on_validation, requested=requested) as recipe:
        recipe.setup()
        recipe.train()
        recipe.evaluate()
        recipe.export()
        recipe.plots()
        result = recipe.result()
        recipe.tracker.set_description(result.summary().strip())
    discard_stage_checkpoints(cfg)
    return result


def _train_stage(cfg: TrainConfig) -> TrainResult:
    """A stage before the run (recsys.train.stages): set up and train only, as its final
    checkpoint is all the run reads of it. It keeps the process group for the run: a group
    torn down and set up again on torchrun's store can read the old group's addresses and
    fail to connect."""
    with TrainRecipe(cfg, validate(cfg), leave_process_group=False) as recipe:
        try:
            recipe.setup()
            recipe.train()
            return recipe.result()
        except BaseException:
            recipe.leave_process_group = True  # no run follows a failed stage: free the group
            raise


# ------------------------------------------------------------------------------------ recipe


class TrainRecipe:
    """One training run; its steps share the state held here. A context manager whose exit
    is the finish step."""

    def __init__(
        self,
        cfg: TrainConfig,
        schema: Schema,
        on_validation: ValidationHook | None = None,
        leave_process_group: bool = True,
        requested: TrainConfig | None = None,
    ):
        """`requested`: the config as asked for, logged as the run's params (default `cfg`).
        After the first-order stage, `cfg` also warm-starts from the stage: that is a tag
        (`warm_started_from`), not a parameter the user set."""
        self.cfg, self.schema = cfg, schema
        self.requested = requested or cfg
        self.on_validation = on_validation
        self.leave_process_group = leave_process_group
        self.state = TrainState()
        self.export_dir: Path | None = None
        self.predictions_path: Path | None = None
        self.tracker: Tracker = NullTracker("not opened yet")
        self._resources = ExitStack()  # what finish() stops, last started first
        self._resume: ResumePoint | None = None
        self.best: BestModel | None = None  # early stopping that keeps the best model
        self._final: Evaluation | None = None  # the final evaluation, for the plots
        self._tables: dict | None = None  # the exported weights, for the plots
        self.model_version = None  # the registered model version (tracked runs)

    def __enter__(self) -> TrainRecipe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exc_type, exc, tb)

    # ------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        cfg, trainer = self.cfg, self.cfg.trainer
        self.env = env = init_distributed(trainer.device)
        self._resources.callback(self._leave_process_group)
        configure_determinism(trainer)
        seed_everything(trainer.seed)
        self.output_dir = Path(broadcast_object(str(Path(cfg.output_dir).resolve()), env))
        self.data = datasets(cfg, self.schema, env)
        self.training = build_training(cfg, self.schema, env)
        warm = self._restore()
        total = estimated_total_steps(
            self.data.train.num_rows, trainer.batch_size, env.world_size, trainer.epochs,
            trainer.max_steps,
        )  # fmt: skip
        scheduler = LRScheduler(self.training.optimizer, trainer.lr_schedule, total)
        self.job = TrainJob(
            self.training.model, self.training.optimizer, self.schema, trainer, env, scheduler
        )
        self.tracker = self._resources.enter_context(
            open_tracker(cfg.tracking, self.requested, enabled_on_this_rank=env.is_main,
                         parent_run_id=cfg.tracking.parent_run_id)
        )  # fmt: skip
        self._start_tracking(warm)
        self.run_metrics = RunMetrics(self.tracker, self.state)
        self.saver = self._checkpointer()
        self._warm_started = warm is not None
        self.best = best_model(
            trainer, self.data, self.output_dir, self._save_checkpoint, env, self._resume,
            warm_started=self._warm_started,
        )  # fmt: skip
        self.monitor = self._monitor()

    def _restore(self) -> WarmStartReport | None:
        """Resume (`trainer.resume`: weights, optimizer state, step, data position) or warm
        start (`trainer.warm_start`: weights only), or neither."""
        trainer, training, env = self.cfg.trainer, self.training, self.env
        if trainer.resume:
            # load_checkpoint takes rank 0's folder, so all ranks load the same one even as
            # new ones appear.
            path = resolve_checkpoint(trainer.resume, Path(trainer.checkpoint.search_dir))
            point = load_checkpoint(
                path, training.model, training.optimizer, self.schema, env, trainer.seed
            )
            check_validation(point.extra.get("validation"), self.data, path)
            self._resume = point
            self.state = TrainState(step=point.step, epoch=point.epoch)
            return None
        if trainer.warm_start:
            return warm_start(
                trainer.warm_start, training.model, training.layout, self.schema, env,
                trainer.warm_start_skip_mismatched,
                optimizer=training.optimizer if trainer.warm_start_optimizer else None,
                expire=load_expiry(trainer.warm_start_expire),
            )  # fmt: skip
        return None

    def _start_tracking(self, warm: WarmStartReport | None) -> None:
        record_start(
            self.tracker, self.cfg, self.schema, self.env, self.output_dir, self.training.plan,
            provenance(self._resume, warm),
        )  # fmt: skip

    def _checkpointer(self) -> Checkpointer:
        """Saves as `trainer.checkpoint` says into `<output_dir>/checkpoints/`."""
        options = self.cfg.trainer.checkpoint
        return Checkpointer(
            self.output_dir, options.every_n_steps, options.at_epoch_end, options.keep_last,
            self._save_checkpoint,
        )  # fmt: skip

    def _save_checkpoint(self, **where) -> Path:
        """A checkpoint of this step; with it, early stopping's judgement so far and where the
        validation rows came from (a resume must read the same ones)."""
        best = self.best.state_dict() if self.best is not None else None
        extra = {"early_stopping": best, "validation": self.data.validation}
        return save_checkpoint(
            model=self.training.model, optimizer=self.training.optimizer, schema=self.schema,
            config=self.cfg, env=self.env, extra=extra, **where,
        )  # fmt: skip

    def _monitor(self) -> ValidationMonitor:
        """Validation between steps, judged by early stopping and the validation hook."""
        return ValidationMonitor(
            model=self.job.model, data=self.data, schema=self.schema, env=self.env,
            every_n_steps=self.cfg.trainer.eval_every_n_steps, best=self.best,
            hook=self.on_validation, run_metrics=self.run_metrics,
            predictions=self._predictions_file(),
        )  # fmt: skip

    # ------------------------------------------------------------------------------- train

    def train(self) -> None:
        """Epoch by epoch until `trainer.epochs`, `trainer.max_steps` or early stopping."""
        state, trainer, monitor = self.state, self.cfg.trainer, self.monitor
        resume = _resume_progress(self._resume)  # the loader position inside the first epoch
        if self._warm_started and self.best is not None and state.step == 0:
            monitor.validate_start(state)
        for epoch in range(state.epoch, trainer.epochs):
            state.epoch = epoch
            with Epoch(self.job, self.data.train, state, resume) as steps:
                for report in steps:
                    if report.metrics:
                        self.run_metrics.log(report.metrics)
                    if monitor.due(state.step):
                        with steps.paused():  # a train pipeline hands the model back
                            monitor.validate(state)
                    self.saver.after_step(state.step, epoch, state.progress)
                    if monitor.stop_reason is not None:
                        break
            resume = None
            self.run_metrics.log(steps.end())
            monitor.at_epoch_end(state)
            if monitor.stop_reason is not None or self.job.reached_max_steps(state):
                self.saver.at_stop(state.step, epoch, state.progress)
                break
            self.saver.after_epoch(state.step, epoch + 1)
        monitor.end_training(state.step)

    # ---------------------------------------------------------------------------- evaluate

    def evaluate(self) -> Evaluation:
        """The final evaluation on data.eval_path (the last validation, when that read the
        eval rows at this step already), and the predictions file."""
        data = self.data
        reused = self.monitor.validated_at(self.state.step) if data.valid is data.eval else None
        if reused is not None:
            evaluation = reused
        else:
            evaluation = evaluate(
                self.job.model, data.eval, self.schema, self.env, self._predictions_file()
            )
            self.run_metrics.record(evaluation, "eval")
        if self.env.is_main:  # every rank wrote its part; rank 0 merged them
            self.predictions_path = evaluation.predictions
            self.tracker.log_artifact(evaluation.predictions)
        self._final = evaluation
        return evaluation

    def _predictions_file(self) -> Path:
        return self.output_dir / "eval_predictions.parquet"

    # ------------------------------------------------------------------------------ export

    def export(self) -> None:
        """The serving export under `<output_dir>/<export.subdir>`, logged to the tracker.
        Every rank writes the table rows it holds; rank 0 finishes and publishes."""
        if not self.cfg.export.enabled:
            return
        env, export = self.env, self.cfg.export
        # Views of this rank's shards (nothing copied, nothing gathered).
        layout = self.training.layout
        weights = layout.split(self.job.model.state_dict())
        weights = replace(
            weights,
            tables={
                n: local_shards(v, env).columns(layout.columns(n))
                for n, v in weights.tables.items()
            },
            first_order={
                n: local_shards(v, env).columns(layout.columns(n, bias=True))
                for n, v in weights.first_order.items()
            },
        )
        provenance = {
            "mlflow_run_id": self.tracker.run_id,
            "output_dir": str(self.output_dir),
            "eval_metrics": self.run_metrics.latest,
        }
        export_dir = write_export(
            self.output_dir / export.subdir,
            self.schema,
            self.training.head_config,
            weights,
            provenance,
            source=SourceFormat.from_config(self.cfg.data),  # so serving reads rows alike
            table_dtype=export.table_dtype,
            measure_on=self.cfg.data.eval_path,  # fp16 / int8: the score error they cause
            measure_rows=export.quantization_eval_rows,
            group=export_group(env),
        )
        if not env.is_main:
            return
        self.export_dir = export_dir
        self._tables = exported_tables(export_dir)  # memory-mapped, for the plots
        # Table bytes, and for fp16 / int8 the max score error and eval AUC change measured.
        self.tracker.log_metrics(export_metrics(self.export_dir), self.state.step)
        if self.tracker.run_id is not None:  # a tracked run: the export as a registered model
            from recsys.tracking.model import log_and_register  # imports mlflow.pyfunc (~1.5 s)

            self.model_version = log_and_register(
                self.tracker, self.export_dir, self.schema, self.run_metrics.latest,
                self.cfg.tracking.register_as,
            )  # fmt: skip

    # ------------------------------------------------------------------------------- plots

    def plots(self) -> None:
        """The run's figures (recsys.train.plots) as artifacts under plots/: rank 0 of a
        tracked run only (the collision estimate reads a sample of training rows)."""
        tables, self._tables = self._tables, None  # the full weights go once drawn
        if not self.env.is_main or self.tracker.run_id is None or self._final is None:
            return
        final = self._final
        stats = collision_stats(self.cfg.data, self.schema)
        figures = run_figures(self.run_metrics.history, final.labels, final.probs, tables, stats)
        for name, fig in figures.items():
            self.tracker.log_figure(fig, name)

    # ------------------------------------------------------------------------------ finish

    def finish(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Stop everything setup started, last started first: the tracker records FINISHED,
        FAILED or KILLED by how the run ended, then the process group goes."""
        if exc is not None:
            self.tracker.set_description(f"Run failed: {type(exc).__name__}: {exc}")
        if tb is not None:
            # The failed steps' frames hold the model and batches as locals; the traceback
            # outlives the run (the caller may keep the exception), they need not.
            traceback.clear_frames(tb)
        self._resources.__exit__(exc_type, exc, tb)

    def _leave_process_group(self) -> None:
        """Drop what holds the process group (the sharded model, its optimizer, the
        checkpointer), then destroy it: gloo's threads stop only with the group's last
        reference, and one still running at interpreter exit aborts the process."""
        for name in ("job", "training", "saver", "best", "monitor"):
            self.__dict__.pop(name, None)
        self._final = self._tables = None
        if not self.leave_process_group:  # another run in this process trains in it next
            return
        if not shutdown_distributed():
            log.warning(
                "The process group outlived the run: something still holds the sharded model "
                "(a reference kept after run() returned?); its threads may abort the exit."
            )

    def result(self) -> TrainResult:
        state = self.state
        return TrainResult(
            metrics=self.run_metrics.latest,
            output_dir=self.output_dir,
            run_id=self.tracker.run_id,
            export_dir=self.export_dir,
            predictions_path=self.predictions_path,
            steps=state.step,
            samples=state.samples,
            samples_per_second=state.samples_per_second,
            history=self.run_metrics.history,
            tracking=self.tracker.describe(),
            stop_reason=self.monitor.stop_reason,
            started_from=self._started_from(),
        )

    def _started_from(self) -> str | None:
        """Where step 0's weights came from, in words (None: a fresh initialisation)."""
        if self._resume is not None:
            return f"resumed from {self._resume.path} (step {self._resume.step})"
        source = self.cfg.trainer.warm_start
        if source is None:
            return None
        if self.requested.trainer.warm_start is None:  # set by the first-order stage
            return (
                f"the first-order stage's LR ({source}): step 0 is that model, and early "
                "stopping keeps it if the whole model never beats it on validation"
            )
        return f"warm start from {source}"


def _resume_progress(point: ResumePoint | None) -> EpochProgress | None:
    """The loader position a resumed epoch starts from (None: from its first row)."""
    if point is None or point.progress is None:
        return None
    return EpochProgress.from_state_dict(point.progress)


__all__ = ["TrainRecipe", "TrainResult", "run"]
