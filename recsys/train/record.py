"""What a run writes about itself: its metrics step by step (`RunMetrics`), and beside them the
config, schema and sharding plan, where its starting weights came from, the data it read
(MLflow dataset inputs with fingerprints), and the eval predictions file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recsys.config import HoldoutConfig, TrainConfig
from recsys.data.fingerprint import data_fingerprint
from recsys.data.source import SourceFormat
from recsys.distributed.env import DistEnv
from recsys.schema import Schema
from recsys.tracking import Tracker, log_data_fingerprint, run_tags
from recsys.train.checkpoint import ResumePoint
from recsys.train.evaluator import Evaluation
from recsys.train.loop import TrainState
from recsys.train.warm_start import WarmStartReport


class RunMetrics:
    """The run's metrics as it goes, each logged at the current step to the tracker and to the
    run's history; `latest` holds the last evaluation's, by prefix (what the run returns)."""

    def __init__(self, tracker: Tracker, state: TrainState):
        self.tracker, self.state = tracker, state
        self.history: list[dict[str, float]] = []
        self.latest: dict[str, float] = {}

    def log(self, metrics: dict[str, float]) -> None:
        """Metrics at the current step: to the tracker and the run's history."""
        self.tracker.log_metrics(metrics, self.state.step)
        self.history.append({"step": float(self.state.step), **metrics})

    def record(self, evaluation: Evaluation, prefix: str) -> None:
        """An evaluation's metrics under `prefix/`, with the training speed so far: logged, and
        the run's latest."""
        metrics = evaluation.metrics.as_dict(prefix=f"{prefix}/")
        if self.state.train_seconds:  # counted at step ends
            metrics["train/samples_per_s_epoch_avg"] = self.state.samples_per_second
        self.latest = metrics
        self.log({**metrics, "epoch": float(self.state.epoch)})


def record_start(
    tracker: Tracker,
    cfg: TrainConfig,
    schema: Schema,
    env: DistEnv,
    output_dir: Path,
    plan: object,
    origin: dict[str, str],
) -> None:
    """At the start of a run: its config, schema, sharding plan and Hydra files as artifacts;
    `origin` (see `provenance`), environment tags and dataset inputs as tags and inputs."""
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "sharding_plan.txt").write_text(str(plan))
        tracker.log_artifact(output_dir / "sharding_plan.txt")
    tracker.log_dict(json.loads(json.dumps(asdict(cfg), default=str)), "config.json")
    tracker.log_dict(schema.to_dict(), "schema.json")
    if (output_dir / ".hydra").is_dir():  # Hydra's composed config and the raw overrides
        tracker.log_artifacts(output_dir / ".hydra", "hydra")
    tracker.set_tags(origin)
    if tracker.run_id is not None:  # rank 0 with tracking on: only then list the files
        tracker.set_tags(run_tags(world_size=env.world_size, device=env.device.type))
        log_datasets(tracker, cfg, schema)


def log_datasets(tracker: Tracker, cfg: TrainConfig, schema: Schema) -> None:
    """Train / validation / eval as MLflow dataset inputs, with fingerprint tags."""
    data, fmt = cfg.data, SourceFormat.from_config(cfg.data)
    paths = {"train": data.train_path, "validation": data.valid_path, "eval": data.eval_path}
    fingerprints = {c: data_fingerprint(p, fmt, schema) for c, p in paths.items() if p}
    if "validation" not in fingerprints and data.holdout.fraction > 0:
        fingerprints["validation"] = held_out(fingerprints["train"], data.holdout)
    for context, fingerprint in fingerprints.items():
        # Named by role too: the UI lists inputs by name, and train and eval share data.name.
        log_data_fingerprint(tracker, context, f"{data.name}-{context}", fingerprint)


def held_out(train: dict[str, Any], holdout: HoldoutConfig) -> dict[str, Any]:
    """The validation slice `data.holdout` takes from the training files, as a fingerprint:
    the same files, a digest of them and the holdout's settings, rows estimated."""
    how = f"{holdout.by.value} {holdout.fraction:g} (seed {holdout.seed})"
    digest = hashlib.sha256(f"{train['digest']} {how}".encode()).hexdigest()
    rows = train["rows"]
    return {
        **train,
        "path": f"{train['path']} (data.holdout: {how})",
        "digest": digest[: len(train["digest"])],
        "rows": None if rows is None else round(rows * holdout.fraction),
    }


def provenance(point: ResumePoint | None, report: WarmStartReport | None) -> dict[str, str]:
    """Tags: where this run's starting weights came from."""
    if point is not None:
        return {"resumed_from": str(point.path), "resumed_at_step": str(point.step)}
    if report is not None:
        return {
            "warm_started_from": str(report.source),
            "warm_start_tables": ",".join(report.tables),
        }
    return {}
