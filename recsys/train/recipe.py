"""The training recipe: one run as named steps, torchtune-style.

    setup      process group, seeds, data streams, the sharded model and its optimizers,
               resume or warm start, the tracker, the checkpointer
    train      epochs of steps; between steps: validation, checkpoints, early stopping
    evaluate   the final evaluation on data.eval_path, and the predictions file
    export     the serving export (every rank takes part; rank 0 writes)
    plots      the run's figures as tracked artifacts (rank 0)
    finish     stops what setup started (tracker, process group), whatever ended the run

`run(cfg)` validates the whole config first (nothing is built, opened or written before),
then runs the steps and returns a `TrainResult`. Every rank runs this same code; only rank 0
prints, tracks and writes the export and the predictions.
"""

from __future__ import annotations

import json
import logging
import traceback
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.config import TrainConfig
from recsys.data.fingerprint import data_fingerprint
from recsys.data.progress import EpochProgress
from recsys.data.source import SourceFormat
from recsys.distributed.env import broadcast_object, init_distributed, shutdown_distributed
from recsys.distributed.sharding import full_state_dict
from recsys.export.writer import export_metrics, write_export
from recsys.schema import Schema
from recsys.tracking import NullTracker, Tracker, log_data_fingerprint, open_tracker, run_tags
from recsys.train.build import build_training, datasets
from recsys.train.checkpoint import (
    Checkpointer,
    ResumePoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from recsys.train.evaluator import Evaluation, evaluate
from recsys.train.loop import Epoch, TrainJob, TrainState
from recsys.train.optim import LRScheduler, estimated_total_steps
from recsys.train.plots import collision_stats, run_figures
from recsys.train.seeding import configure_determinism, seed_everything
from recsys.train.stopping import EarlyStopping
from recsys.train.validate import validate
from recsys.train.warm_start import WarmStartReport, warm_start

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced (complete on rank 0; other ranks get metrics only)."""

    metrics: dict[str, float]
    output_dir: Path
    run_id: str | None = None
    export_dir: Path | None = None
    predictions_path: Path | None = None
    steps: int = 0
    samples: int = 0  # real rows trained by this run (after a resume: since it)
    samples_per_second: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    tracking: str = ""
    stop_reason: str | None = None  # set when early stopping ended training

    def summary(self) -> str:
        """The few lines a person wants at the end of a run (also the MLflow description)."""
        m = self.metrics
        nan = float("nan")
        lines = [
            "",
            "== recsys run finished ==",
            f"  eval AUC {m.get('eval/auc', nan):.4f} | log loss {m.get('eval/log_loss', nan):.4f} "
            f"| NE {m.get('eval/ne', nan):.4f} | calibration {m.get('eval/calibration', nan):.3f}",
            f"  steps {self.steps} | {self.samples_per_second:,.0f} samples/s",
            f"  outputs  {self.output_dir}",
            f"  export   {self.export_dir or '(export disabled)'}",
            f"  tracking {self.tracking}",
        ]
        if self.stop_reason:
            lines.insert(4, f"  stopped  {self.stop_reason}")
        if self.run_id:
            lines.append("  open the MLflow UI with `make ui` (http://127.0.0.1:5000)")
        return "\n".join(lines)


def run(cfg: TrainConfig) -> TrainResult:
    """Train, evaluate and export as `cfg` says; joins torchrun's process group if there is one."""
    schema = validate(cfg)  # before any side effect: a bad value leaves nothing behind
    with TrainRecipe(cfg, schema) as recipe:
        recipe.setup()
        recipe.train()
        recipe.evaluate()
        recipe.export()
        recipe.plots()
        result = recipe.result()
        recipe.tracker.set_description(result.summary().strip())
        return result


# ------------------------------------------------------------------------------------ recipe


class TrainRecipe:
    """One training run; its steps share the state held here. A context manager whose exit
    is the finish step."""

    def __init__(self, cfg: TrainConfig, schema: Schema):
        self.cfg, self.schema = cfg, schema
        self.state = TrainState()
        self.history: list[dict[str, float]] = []
        self.metrics: dict[str, float] = {}  # the last evaluation's, by prefix
        self.stop_reason: str | None = None
        self.export_dir: Path | None = None
        self.predictions_path: Path | None = None
        self.tracker: Tracker = NullTracker("not opened yet")
        self._resources = ExitStack()  # what finish() stops, last started first
        self._resume: ResumePoint | None = None
        self._last_validation: tuple[int, Evaluation] | None = None
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
        stopping = trainer.early_stopping
        self.stopper = EarlyStopping(stopping) if stopping.enabled else None
        if self.stopper is not None and self.data.valid is self.data.eval and env.is_main:
            log.warning(
                "trainer.early_stopping watches data.eval_path, so eval metrics are no longer "
                "unseen; set data.valid_path to stop on a validation set instead."
            )
        self.tracker = self._resources.enter_context(
            open_tracker(cfg.tracking, cfg, enabled_on_this_rank=env.is_main,
                         parent_run_id=cfg.tracking.parent_run_id)
        )  # fmt: skip
        self._start_tracking(warm)
        self.saver = self._checkpointer()

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
            self._resume = point
            self.state = TrainState(step=point.step, epoch=point.epoch)
            return None
        if trainer.warm_start:
            return warm_start(
                trainer.warm_start, training.model, training.layout, self.schema, env,
                trainer.warm_start_skip_mismatched,
            )  # fmt: skip
        return None

    def _start_tracking(self, warm: WarmStartReport | None) -> None:
        tracker, output_dir = self.tracker, self.output_dir
        if self.env.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "sharding_plan.txt").write_text(str(self.training.plan))
            tracker.log_artifact(output_dir / "sharding_plan.txt")
        tracker.log_dict(json.loads(json.dumps(asdict(self.cfg), default=str)), "config.json")
        tracker.log_dict(self.schema.to_dict(), "schema.json")
        if (output_dir / ".hydra").is_dir():  # Hydra's composed config and the raw overrides
            tracker.log_artifacts(output_dir / ".hydra", "hydra")
        tracker.set_tags(_provenance(self._resume, warm))
        if tracker.run_id is not None:  # rank 0 with tracking on: only then list the files
            env = self.env
            tracker.set_tags(run_tags(world_size=env.world_size, device=env.device.type))
            self._log_datasets()

    def _log_datasets(self) -> None:
        """Train / validation / eval as MLflow dataset inputs, with fingerprint tags."""
        data, fmt = self.cfg.data, SourceFormat.from_config(self.cfg.data)
        paths = {"train": data.train_path, "validation": data.valid_path, "eval": data.eval_path}
        for context, path in paths.items():
            if path:
                fingerprint = data_fingerprint(path, fmt, self.schema)
                log_data_fingerprint(self.tracker, context, data.name, fingerprint)

    def _checkpointer(self) -> Checkpointer:
        """Saves as `trainer.checkpoint` says into `<output_dir>/checkpoints/`."""
        options, training = self.cfg.trainer.checkpoint, self.training
        schema, cfg, env = self.schema, self.cfg, self.env

        def save(**where) -> Path:
            return save_checkpoint(
                model=training.model, optimizer=training.optimizer, schema=schema, config=cfg,
                env=env, **where,
            )  # fmt: skip

        return Checkpointer(
            self.output_dir, options.every_n_steps, options.at_epoch_end, options.keep_last, save
        )

    # ------------------------------------------------------------------------------- train

    def train(self) -> None:
        """Epoch by epoch until `trainer.epochs`, `trainer.max_steps` or early stopping."""
        state, trainer = self.state, self.cfg.trainer
        resume = _resume_progress(self._resume)  # the loader position inside the first epoch
        for epoch in range(state.epoch, trainer.epochs):
            state.epoch = epoch
            with Epoch(self.job, self.data.train, state, resume) as steps:
                for report in steps:
                    if report.metrics:
                        self._log(report.metrics)
                    if self._validation_due():
                        with steps.paused():  # a train pipeline hands the model back
                            self._validate()
                    self.saver.after_step(state.step, epoch, state.progress)
                    if self.stop_reason is not None:
                        break
            resume = None
            self._log(steps.end())
            self._log_epoch(self._validation_at_this_step())
            if self.stop_reason is not None or self.job.reached_max_steps(state):
                self.saver.at_stop(state.step, epoch, state.progress)
                break
            self.saver.after_epoch(state.step, epoch + 1)
        self._record_stop()

    def _validation_due(self) -> bool:
        every = self.cfg.trainer.eval_every_n_steps
        return every is not None and self.state.step % every == 0

    def _validate(self) -> Evaluation:
        """Evaluate the validation rows, record them, and let early stopping judge."""
        evaluation = evaluate(self.job.model, self.data.valid, self.schema, self.env)
        self._last_validation = (self.state.step, evaluation)
        self._record(evaluation, self.data.valid_prefix)
        if self.stopper is not None and self.stop_reason is None:
            self.stop_reason = self.stopper.update(evaluation.metrics, self.state.step)
        return evaluation

    def _validation_at_this_step(self) -> Evaluation:
        """The validation at the current step (run now unless one just ran)."""
        if self._last_validation is not None and self._last_validation[0] == self.state.step:
            return self._last_validation[1]
        return self._validate()

    def _log_epoch(self, evaluation: Evaluation) -> None:
        if self.env.is_main:
            m, state = evaluation.metrics, self.state
            log.info(
                "epoch %d: step %d, %s AUC %.4f, log loss %.4f, %.0f samples/s",
                state.epoch, state.step, self.data.valid_prefix, m.auc, m.log_loss,
                state.samples_per_second,
            )  # fmt: skip

    def _record_stop(self) -> None:
        if self.stop_reason is None:
            return
        self.tracker.set_tags({"stop_reason": self.stop_reason})
        self.tracker.log_metrics({"train/early_stopped": 1.0}, self.state.step)
        log.info("%s", self.stop_reason)

    # ---------------------------------------------------------------------------- evaluate

    def evaluate(self) -> Evaluation:
        """The final evaluation on data.eval_path (the last validation, when that read the
        eval rows at this step already), and the predictions file."""
        if self.data.valid is self.data.eval:
            evaluation = self._validation_at_this_step()
        else:
            evaluation = evaluate(self.job.model, self.data.eval, self.schema, self.env)
            self._record(evaluation, "eval")
        if self.env.is_main:
            self.predictions_path = self._write_predictions(evaluation)
        self._final = evaluation
        return evaluation

    def _write_predictions(self, evaluation: Evaluation) -> Path:
        path = self.output_dir / "eval_predictions.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"row_id": evaluation.row_ids, "prob": evaluation.probs}), path)
        self.tracker.log_artifact(path)
        return path

    # ------------------------------------------------------------------------------ export

    def export(self) -> None:
        """The serving export under `<output_dir>/<export.subdir>`, logged to the tracker."""
        if not self.cfg.export.enabled:
            return
        state = full_state_dict(self.job.model, self.env)  # a collective: all ranks take part
        if not self.env.is_main:
            return
        provenance = {
            "mlflow_run_id": self.tracker.run_id,
            "output_dir": str(self.output_dir),
            "eval_metrics": self.metrics,
        }
        weights = self.training.layout.split(state)
        export = self.cfg.export
        self.export_dir = write_export(
            self.output_dir / export.subdir,
            self.schema,
            self.training.head_config,
            weights,
            provenance,
            source=SourceFormat.from_config(self.cfg.data),  # so serving reads rows alike
            table_dtype=export.table_dtype,
            measure_on=self.cfg.data.eval_path,  # fp16 / int8: the score error they cause
            measure_rows=export.quantization_eval_rows,
        )
        self._tables = weights.tables
        # Table bytes, and for fp16 / int8 the max score error and eval AUC change measured.
        self.tracker.log_metrics(export_metrics(self.export_dir), self.state.step)
        if self.tracker.run_id is not None:  # a tracked run: the export as a registered model
            from recsys.tracking.model import log_and_register  # imports mlflow.pyfunc (~1.5 s)

            self.model_version = log_and_register(
                self.tracker, self.export_dir, self.schema, self.metrics,
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
        figures = run_figures(self.history, final.labels, final.probs, tables, stats)
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
        for name in ("job", "training", "saver", "stopper"):
            self.__dict__.pop(name, None)
        self._final = self._tables = None
        if not shutdown_distributed():
            log.warning(
                "The process group outlived the run: something still holds the sharded model "
                "(a reference kept after run() returned?); its threads may abort the exit."
            )

    def result(self) -> TrainResult:
        state = self.state
        return TrainResult(
            metrics=self.metrics,
            output_dir=self.output_dir,
            run_id=self.tracker.run_id,
            export_dir=self.export_dir,
            predictions_path=self.predictions_path,
            steps=state.step,
            samples=state.samples,
            samples_per_second=state.samples_per_second,
            history=self.history,
            tracking=self.tracker.describe(),
            stop_reason=self.stop_reason,
        )

    # --------------------------------------------------------------------------- recording

    def _log(self, metrics: dict[str, float]) -> None:
        """Metrics at the current step: to the tracker and the run's history."""
        self.tracker.log_metrics(metrics, self.state.step)
        self.history.append({"step": float(self.state.step), **metrics})

    def _record(self, evaluation: Evaluation, prefix: str) -> None:
        metrics = evaluation.metrics.as_dict(prefix=f"{prefix}/")
        if self.state.train_seconds:  # counted at step ends
            metrics["train/samples_per_s_epoch_avg"] = self.state.samples_per_second
        self.metrics = metrics
        self._log({**metrics, "epoch": float(self.state.epoch)})


def _resume_progress(point: ResumePoint | None) -> EpochProgress | None:
    """The loader position a resumed epoch starts from (None: from its first row)."""
    if point is None or point.progress is None:
        return None
    return EpochProgress.from_state_dict(point.progress)


def _provenance(point: ResumePoint | None, report: WarmStartReport | None) -> dict[str, str]:
    """Tags for the tracker: where this run's starting weights came from."""
    if point is not None:
        return {"resumed_from": str(point.path), "resumed_at_step": str(point.step)}
    if report is not None:
        return {
            "warm_started_from": str(report.source),
            "warm_start_tables": ",".join(report.tables),
        }
    return {}


__all__ = ["TrainRecipe", "TrainResult", "run"]
