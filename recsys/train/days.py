"""Training day after day: `make train-days ARGS='data.days=PATH/day=*'`.

The day folders (`data.days`, a glob) are taken in sorted order; for day d:

    1. its ids are read once: the share never seen on an earlier day (per feature, exact:
       `recsys.train.day_stats`), and each managed table's hashed ids, for expiry
    2. day d trains as one run of the recipe, warm-started from day d-1's final checkpoint:
       tables, dense part, optimizer state and managed remaps (`recsys.train.warm_start`);
       managed tables with `expire_after_days: K` first take rows back from ids not seen on
       any of the K days before d
    3. that run evaluates on day d+1 (progressive validation: the model of day d scores day
       d+1 before anything trains on it); the last day, having no next day, evaluates on its
       own rows (in-sample, tagged `recsys.days.eval=in_sample`, not a next-day AUC)
    4. its export is compared with day d-1's (rows touched, drift, norms), and a delta export
       (`recsys.export.delta`: the changed rows, chained on day d-1's export) is written
    5. every day is a child MLflow run under one parent run (as a sweep's trials); the day's
       numbers go to its child run and, with step = d, to the parent

Outputs, under the run folder: `day_<d>_<name>/` per day (the day's run folder: checkpoints,
export, `delta/` from day 1 on, `expire.npz` when ids expired).
"""

from __future__ import annotations

import glob
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from recsys.config import ConfigError, TrainConfig
from recsys.data.source import SourceFormat
from recsys.export.delta import write_delta
from recsys.schema import Schema
from recsys.tracking import Tracker, open_tracker
from recsys.train.day_stats import IdHistory, read_day_ids, table_stats
from recsys.train.recipe import run
from recsys.train.validate import validate

log = logging.getLogger(__name__)

NEXT_DAY_AUC = "next_day/auc"


@dataclass
class DayResult:
    """One day's run and what was measured about it."""

    index: int
    name: str
    train_path: str
    eval_path: str | None  # the next day; None on the last day (evaluated in-sample)
    output_dir: Path
    run_id: str | None
    export_dir: Path | None
    delta_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    warm_start: str | None = None  # the checkpoint this day started from


@dataclass
class DaysResult:
    days: list[DayResult]
    parent_run_id: str | None
    output_dir: Path

    def summary(self) -> str:
        lines = ["", "== recsys days finished ==", f"  outputs {self.output_dir}"]
        for day in self.days:
            m = day.metrics
            drift = [f"{k.split('/')[1]} {v:.4f}" for k, v in m.items() if k.startswith("drift/")]
            new = [f"{k.split('/')[1]} {v:.2f}" for k, v in m.items() if k.startswith("new_ids/")]
            auc = f"{m[NEXT_DAY_AUC]:.4f}" if NEXT_DAY_AUC in m else "  -   "
            lines.append(
                f"  {day.name:<16} next-day AUC {auc} | new ids {', '.join(new)}"
                + (f" | drift {', '.join(drift)}" if drift else "")
            )
        return "\n".join(lines)


def day_folders(pattern: str) -> list[str]:
    """The day folders (or files) `data.days` names, in sorted order."""
    days = sorted(glob.glob(pattern))
    if not days:
        raise ConfigError(
            f"data.days={pattern} matches nothing: give a glob of day folders, e.g. "
            f"data.days=data/movielens_weeks/week=* (`recsys-data days` writes them)."
        )
    return days


def check_days_config(cfg: TrainConfig) -> list[str]:
    """The day folders, once the options train-days relies on are checked."""
    if not cfg.data.days:
        raise ConfigError("data.days is not set: give a glob of day folders (PATH/day=*).")
    if cfg.trainer.resume or cfg.trainer.warm_start:
        raise ConfigError(
            "trainer.resume / trainer.warm_start are set by train-days itself (each day starts "
            "from the day before); drop them."
        )
    if not cfg.trainer.checkpoint.at_epoch_end or not cfg.export.enabled:
        raise ConfigError(
            "train-days warm-starts each day from the last one's final checkpoint and compares "
            "exports: keep trainer.checkpoint.at_epoch_end=true and export.enabled=true."
        )
    return day_folders(cfg.data.days)


def run_days(cfg: TrainConfig) -> DaysResult:
    """Train every day of `cfg.data.days` in order (see the module docstring)."""
    days = check_days_config(cfg)
    schema = validate(_day_config(cfg, days, 0, None, None, None))
    out = Path(cfg.output_dir).resolve()
    history, results = IdHistory(), []
    name = cfg.tracking.run_name or f"days-{cfg.model.name}-{cfg.data.name}"
    with open_tracker(replace(cfg.tracking, run_name=name), run_config=None) as parent:
        parent.log_params({"days.glob": cfg.data.days, "days.count": len(days)})
        parent.set_tags({"recsys.days": "parent", "recsys.days_dir": str(out)})
        for index in range(len(days)):
            previous = results[-1] if results else None
            results.append(_run_day(cfg, schema, days, index, history, previous, parent))
        result = DaysResult(results, parent.run_id, out)
        parent.set_description(result.summary().strip())
    return result


def _run_day(
    cfg: TrainConfig,
    schema: Schema,
    days: list[str],
    index: int,
    history: IdHistory,
    previous: DayResult | None,
    parent: Tracker,
) -> DayResult:
    started = time.perf_counter()
    day_ids = read_day_ids(days[index], SourceFormat.from_config(cfg.data), schema)
    metrics = history.new_ids(day_ids)
    out = Path(cfg.output_dir).resolve() / f"day_{index:03d}_{_name(days[index])}"
    expire = _write_expiry(cfg, schema, history, index, out)
    history.record(day_ids, index)
    warm = str(previous.output_dir) if previous is not None else None
    day_cfg = _day_config(cfg, days, index, warm, expire, parent.run_id)
    day_cfg = replace(day_cfg, output_dir=str(out))
    trained = run(day_cfg)
    nxt = days[index + 1] if index + 1 < len(days) else None
    if nxt is not None and "eval/auc" in trained.metrics:
        metrics[NEXT_DAY_AUC] = trained.metrics["eval/auc"]
        metrics["next_day/log_loss"] = trained.metrics.get("eval/log_loss", float("nan"))
    before = previous.export_dir if previous is not None else None
    if trained.export_dir is not None:
        metrics |= table_stats(before, trained.export_dir)
    delta = None
    if before is not None and trained.export_dir is not None:
        delta = write_delta(before, trained.export_dir, out / "delta")
    metrics["day/seconds"] = time.perf_counter() - started
    day = DayResult(
        index, _name(days[index]), days[index], nxt, out, trained.run_id,
        trained.export_dir, delta, metrics, warm,
    )  # fmt: skip
    _log_day(parent, day)
    return day


def _day_config(
    cfg: TrainConfig,
    days: list[str],
    index: int,
    warm: str | None,
    expire: Path | None,
    parent_run_id: str | None,
) -> TrainConfig:
    """Day `index`'s run: its rows, the next day's as eval rows (its own on the last day),
    warm-started from the day before with its optimizer state, nested under the parent run."""
    nxt = days[index + 1] if index + 1 < len(days) else days[index]
    # days=None: a day is a single run, and validate refuses data.days on one
    data = replace(cfg.data, train_path=days[index], eval_path=nxt, days=None)
    trainer = replace(
        cfg.trainer,
        warm_start=warm,
        warm_start_optimizer=warm is not None,
        warm_start_expire=None if expire is None else str(expire),
        early_stopping=replace(cfg.trainer.early_stopping, restore_best=False),
    )
    tracking = replace(
        cfg.tracking,
        parent_run_id=parent_run_id,
        run_name=f"day-{index:03d}-{_name(days[index])}",
        register_as=None,
    )
    return replace(cfg, data=data, trainer=trainer, tracking=tracking)


def _write_expiry(
    cfg: TrainConfig, schema: Schema, history: IdHistory, index: int, out: Path
) -> Path | None:
    """Managed tables with `expire_after_days`: ids not seen on any of the K days before day
    `index` lose their rows at its warm start (an .npz the warm start reads)."""
    expiring = {
        t.name: cfg.data.tables[t.name].managed.expire_after_days
        for t in schema.managed_tables
        if t.name in cfg.data.tables and cfg.data.tables[t.name].managed.expire_after_days
    }
    if index == 0 or not expiring:
        return None
    ids = {table: history.expired(table, index, k) for table, k in expiring.items()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "expire.npz"
    np.savez(path, **ids)
    log.info("day %d: expiring %s managed ids", index, {t: len(v) for t, v in ids.items()})
    return path


def _log_day(parent: Tracker, day: DayResult) -> None:
    """The day's numbers: to its child run (now finished) and to the parent at step = day."""
    parent.log_metrics(day.metrics, step=day.index)
    client = getattr(parent, "client", None)
    if client is not None and day.run_id is not None:
        for key, value in day.metrics.items():
            client.log_metric(day.run_id, f"days/{key}", float(value), step=day.index)
        client.set_tag(day.run_id, "recsys.days.eval", "next_day" if day.eval_path else "in_sample")
    log.info(
        "day %d (%s): %s", day.index, day.name,
        {k: round(v, 4) for k, v in day.metrics.items() if "/" in k and "norm" not in k},
    )  # fmt: skip


def _name(path: str) -> str:
    """A day's name from its folder: `day=2024-01-02` -> `2024-01-02`."""
    stem = Path(path.rstrip("/")).name
    return stem.split("=", 1)[1] if "=" in stem else Path(stem).stem
