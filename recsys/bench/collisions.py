"""`make bench-hashing`: the collision study, eval AUC as id tables shrink, per hashing option.

    .venv/bin/python -m recsys.bench.collisions [--datasets synth-first_order,movielens]
        [--hashings plain,double,qr,managed] [--ratios 1,1/3,1/10,1/30,1/100] [--seeds 0,1,2]
        [--quick] [--cache PATH] [--out outputs/bench] [--no-track]

Per data set some id tables shrink to `ratio` x the distinct ids of their column (train and
eval files together), and every hashing option gets the same number of embedding rows: plain,
double (both hashes into the one table) and managed `num_buckets = rows`; qr a quotient and a
remainder table whose rows add up to `rows` (the largest virtual table that fits). A
`reference` point trains the data set's own, far larger tables (plain). Each (data set,
hashing, ratio, seed) trains one epoch in a process of its own (`quality.RunCache`, whose
`--cache` file of finished runs is reused). Synthetic logs report the share of the achievable
lift, (AUC - 0.5) / (best - 0.5), best = AUC of the planted `p_true` on eval.

Bytes per point are what serving holds for the shrunk tables (`serving_bytes`): float32 rows
x (embedding_dim + 1 bias), and for managed tables the remap's (id, row) int64 pairs, 16 bytes
a row. The report (JSON), a plot (PNG) and one MLflow run per study (metrics per point, step =
1/ratio; the JSON and the PNG as artifacts) go to `--out` and the project's tracking store.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from data_tools.criteo import CATEGORICAL_COLUMNS
from recsys.bench.quality import DATASETS, Dataset, RunCache, SynthLog, _synth_dataset, lift
from recsys.config import TrackingConfig

logger = logging.getLogger(__name__)

HASHINGS = ("plain", "double", "qr", "managed")
REFERENCE = "reference"  # the data set's own tables, plain: (almost) no collisions
RATIOS = (Fraction(1), Fraction(1, 3), Fraction(1, 10), Fraction(1, 30), Fraction(1, 100))
QUICK_RATIOS = (Fraction(1), Fraction(1, 100))
#: qr needs >= 2 rows in each of its tables beside their missing-id rows: no table is smaller.
MIN_ROWS = 6
REMAP_BYTES_PER_ROW = 16  # a managed table's remap: (id, row), int64 each
STUDY_TRAINER = ["trainer.epochs=1"]  # one pass: 20-odd seconds a run on a loaded 2-core box
EXPERIMENT = "bench-hashing"


@dataclass(frozen=True)
class CollisionData:
    """A data set and the tables the study shrinks (each read by the feature of its name)."""

    data: Dataset
    tables: tuple[str, ...]


def _one_epoch(data: Dataset) -> Dataset:
    return Dataset(data.name, [*data.overrides, *STUDY_TRAINER], data.synth, data.fetched)


#: first_order: per-id effects on C1..C10, 1,000 ids per column (Zipf 1.05) over 200k rows:
#: one epoch on the data set's own tables reaches ~0.89 of the achievable lift, so the loss
#: from shrinking shows. Every C column shrinks (C11..C26 carry no signal, as in real logs).
STUDY_DATA: dict[str, CollisionData] = {
    "synth-first_order": CollisionData(
        _one_epoch(_synth_dataset(SynthLog("first_order", 1000))), tuple(CATEGORICAL_COLUMNS)
    ),
    "movielens": CollisionData(_one_epoch(DATASETS["movielens"]), ("user_id", "item_id")),
}


@dataclass
class Point:
    """One (data set, hashing, ratio): its tables' sizes and its runs, one per seed."""

    dataset: str
    hashing: str
    ratio: str  # "1/10"; "" for the reference
    rows: dict[str, int]  # physical table -> rows (the shrunk tables only)
    bytes: int
    best_auc: float | None = None
    runs: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # runs that failed, why (not hidden)

    @property
    def step(self) -> int:
        """1/ratio (1, 3, 10, ...); 0 for the reference: the MLflow step of its metrics."""
        return round(1 / Fraction(self.ratio)) if self.ratio else 0

    def stat(self, metric: str = "eval/auc") -> tuple[float, float]:
        """Mean and sd over seeds (nan when no run measured it)."""
        return mean_sd([r[metric] for r in self.runs if metric in r])

    def share(self) -> tuple[float, float] | None:
        """Mean and sd of the share of the achievable lift (synthetic logs only)."""
        if self.best_auc is None:
            return None
        return mean_sd([lift(r["eval/auc"], self.best_auc) for r in self.runs if "eval/auc" in r])


def mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# ------------------------------------------------------------------------------ table sizes


def table_rows(distinct: int, ratio: Fraction) -> int:
    """Embedding rows for a table at `ratio` of its distinct ids (at least MIN_ROWS)."""
    return max(MIN_ROWS, round(distinct * ratio))


def table_spec(hashing: str, rows: int) -> str:
    """One table's `data.tables.<t>` value (Hydra dict syntax) holding `rows` embedding rows.

    qr: remainder R and quotient Q rows, each plus its missing-id row, sum to `rows`; the
    virtual table is then 1 + Q x R buckets, the most that fits.
    """
    if hashing != "qr":
        return f"{{num_buckets:{rows},hashing:{hashing}}}"
    remainder = max(2, (rows - 2) // 2)
    quotient = max(2, rows - 2 - remainder)
    return f"{{num_buckets:{1 + quotient * remainder},hashing:qr,qr_remainder:{remainder}}}"


def shrink_overrides(hashing: str, rows: dict[str, int]) -> list[str]:
    """The override that resizes (and re-hashes) the given tables; others stay as they are."""
    inner = ",".join(f"{t}:{table_spec(hashing, n)}" for t, n in rows.items())
    return [f"++data.tables={{{inner}}}"]


def serving_bytes(overrides: list[str], tables: tuple[str, ...]) -> tuple[dict[str, int], int]:
    """Rows of each physical table the given tables became, and the bytes serving holds for
    them (float32 rows x (dim + bias), plus a managed table's remap), from the resolved schema
    of the very overrides a run trains with."""
    from recsys.compose import load_config
    from recsys.schema import resolve_schema

    cfg = load_config(overrides)
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    width_of = 1 if cfg.model.first_order else 0  # the export keeps one summed bias column
    mine = [t for t in schema.tables if t.name in tables or t.name.split("__")[0] in tables]
    rows = {t.name: t.num_buckets for t in mine}
    size = sum(t.num_buckets * (t.embedding_dim + width_of) * 4 for t in mine)
    size += sum(t.num_buckets * REMAP_BYTES_PER_ROW for t in mine if t.managed is not None)
    return rows, size


def distinct_ids(data: Dataset, tables: tuple[str, ...]) -> dict[str, int]:
    """Distinct non-missing ids of each table's column over the train and eval files."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from recsys.compose import load_config

    cfg = load_config(data.overrides)
    columns = {t: cfg.data.features[t].column or t for t in tables}
    parts = [
        pq.read_table(p, columns=sorted(set(columns.values())))
        for p in (cfg.data.train_path, cfg.data.eval_path)
    ]
    both = pa.concat_tables(parts)
    return {t: len(pc.unique(both[c]).drop_null()) for t, c in columns.items()}


# ------------------------------------------------------------------------------------ study


def plan(
    name: str, spec: CollisionData, hashings: list[str], ratios: list[Fraction]
) -> list[tuple[Point, list[str]]]:
    """Every point of one data set, with the overrides its runs train with."""
    spec.data.prepare()
    distinct = distinct_ids(spec.data, spec.tables)
    logger.info("%s: distinct ids %s", name, distinct)
    best = spec.data.best_auc()
    settings = [(REFERENCE, None)] + [(h, r) for h in hashings for r in ratios]
    out = []
    for hashing, ratio in settings:
        shrink = []
        if ratio is not None:
            shrink = shrink_overrides(
                hashing, {t: table_rows(distinct[t], ratio) for t in distinct}
            )
        overrides = [*spec.data.overrides, *shrink]
        rows, size = serving_bytes(overrides, spec.tables)
        out.append((Point(name, hashing, str(ratio or ""), rows, size, best), overrides))
    return out


def study(
    datasets: dict[str, CollisionData],
    hashings: list[str],
    ratios: list[Fraction],
    seeds: list[int],
    cache: RunCache | None = None,
) -> list[Point]:
    """Every point, seeds innermost; a run that fails is recorded in its point, not raised."""
    cache = cache or RunCache(None)
    work = [pair for name, spec in datasets.items() for pair in plan(name, spec, hashings, ratios)]
    with logging_redirect_tqdm(), tqdm(total=len(work) * len(seeds), desc="runs") as bar:
        for point, overrides in work:
            for seed in seeds:
                _run(cache, point, [*overrides, f"trainer.seed={seed}"], seed)
                bar.update()
    return [point for point, _ in work]


def _run(cache: RunCache, point: Point, overrides: list[str], seed: int) -> None:
    what = f"{point.dataset} {point.hashing} {point.ratio or '(own tables)'} seed {seed}"
    try:
        metrics = cache.get(overrides, None)
    except RuntimeError as err:  # a setting that cannot train is a result of the study
        point.errors.append(f"seed {seed}: {str(err).strip().splitlines()[-1]}")
        logger.warning("%s FAILED: %s", what, point.errors[-1])
        return
    point.runs.append(metrics)
    logger.info("%s: eval AUC %.4f", what, metrics.get("eval/auc", float("nan")))


# ----------------------------------------------------------------------------------- report


def report(points: list[Point], seeds: list[int]) -> dict[str, Any]:
    """The JSON report: per point its sizes, runs, errors and summary statistics."""
    rows = []
    for p in points:
        (auc, auc_sd), share = p.stat(), p.share()
        summary = {"eval_auc": auc, "eval_auc_sd": auc_sd}
        if share is not None:
            summary |= {"share": share[0], "share_sd": share[1]}
        finite = {k: None if math.isnan(v) else v for k, v in summary.items()}  # strict JSON
        rows.append({**asdict(p), **finite})
    return {"seeds": seeds, "trainer": STUDY_TRAINER, "points": rows}


def _cell(mean: float, sd: float, scale: float = 1.0, digits: int = 4) -> str:
    return "-" if math.isnan(mean) else f"{mean * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def table(points: list[Point]) -> str:
    """Markdown: per point eval AUC, share of the achievable lift (%), table bytes."""
    lines = [
        "| data set | hashing | rows / distinct ids | table KiB | eval AUC | share of lift (%) |",
        "|---|---|---|---|---|---|",
    ]
    for p in points:
        share = p.share()
        shown = "" if share is None else _cell(*share, scale=100, digits=1)
        auc = _cell(*p.stat())
        if p.errors:
            auc += f" (failed {len(p.errors)}: {p.errors[0]})"
        lines.append(
            f"| {p.dataset} | {p.hashing} | {p.ratio or 'own tables'} | {p.bytes / 1024:,.1f} "
            f"| {auc} | {shown} |"
        )
    return "\n".join(lines)


def plot(points: list[Point], path: Path) -> None:
    """Per data set: share of lift (synthetic) or eval AUC against table bytes, per hashing."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(p.dataset for p in points))
    fig = Figure(figsize=(6 * len(names), 4.5), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        mine = [p for p in points if p.dataset == name]
        value = (lambda p: p.share()) if mine[0].best_auc is not None else (lambda p: p.stat())
        for hashing in dict.fromkeys(p.hashing for p in mine if p.hashing != REFERENCE):
            line = [p for p in mine if p.hashing == hashing and p.runs]
            (means, sds) = zip(*(value(p) for p in line), strict=True) if line else ((), ())
            ax.errorbar([p.bytes / 2**20 for p in line], means, sds, marker="o", label=hashing)
            for p, y in zip(line, means, strict=True) if hashing == "plain" else ():
                ax.annotate(
                    p.ratio, (p.bytes / 2**20, y), textcoords="offset points", xytext=(4, -12)
                )
        for p in mine:
            if p.hashing == REFERENCE and p.runs:
                label = f"own tables, plain ({p.bytes / 2**20:,.0f} MiB)"
                ax.axhline(value(p)[0], color="grey", ls="--", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("shrunk tables, MiB (labels: rows / distinct ids)")
        ax.set_ylabel("share of achievable lift" if mine[0].best_auc else "eval AUC")
        ax.set_title(name)
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def track(
    data: dict[str, Any], files: list[Path], params: dict[str, str], cfg: TrackingConfig
) -> str | None:
    """One MLflow run for the study: metrics per point (step = 1/ratio), files as artifacts."""
    from recsys.tracking import open_tracker

    with open_tracker(cfg, run_config=None) as tracker:
        tracker.log_params(params)
        for p in data["points"]:
            prefix = f"{p['dataset']}/{p['hashing']}"
            metrics = {f"{prefix}/{k}": p[k] for k in ("eval_auc", "eval_auc_sd", "bytes")}
            metrics |= {f"{prefix}/{k}": p[k] for k in ("share", "share_sd") if k in p}
            metrics[f"{prefix}/failed_runs"] = len(p["errors"])
            finite = {k: v for k, v in metrics.items() if v is not None}
            tracker.log_metrics(finite, step=round(1 / Fraction(p["ratio"])) if p["ratio"] else 0)
        for path in files:
            tracker.log_artifact(path)
        return tracker.run_id


# ------------------------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(STUDY_DATA))
    parser.add_argument("--hashings", default=",".join(HASHINGS))
    parser.add_argument(
        "--ratios", help="table rows / distinct ids, e.g. 1,1/10 (default 1..1/100)"
    )
    parser.add_argument("--seeds", help="trainer seeds (default 0,1,2; --quick: 0)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: ratios 1 and 1/100, seed 0"
    )
    parser.add_argument("--cache", type=Path, help="JSON of finished runs, reused and extended")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--tracking-uri", help="MLflow store (default: as `make train`)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    for option, known in (("datasets", STUDY_DATA), ("hashings", HASHINGS)):
        unknown = [v for v in getattr(args, option).split(",") if v not in known]
        if unknown:
            raise SystemExit(f"--{option}: unknown {unknown}; known: {list(known)}")
    return args


def main(argv: list[str] | None = None) -> list[Point]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse(argv)
    default_ratios = QUICK_RATIOS if args.quick else RATIOS
    ratios = [Fraction(r) for r in args.ratios.split(",")] if args.ratios else list(default_ratios)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    datasets = {d: STUDY_DATA[d] for d in args.datasets.split(",")}
    points = study(datasets, args.hashings.split(","), ratios, seeds, RunCache(args.cache))
    print(table(points))
    stem = args.out / ("collisions-quick" if args.quick else "collisions")
    data = report(points, seeds)
    stem.with_suffix(".json").parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2))
    plot(points, stem.with_suffix(".png"))
    if not args.no_track:
        params = {
            "datasets": args.datasets,
            "hashings": args.hashings,
            "ratios": ",".join(map(str, ratios)),
            "seeds": ",".join(map(str, seeds)),
            "trainer": " ".join(STUDY_TRAINER),
        }
        name = f"{stem.name}-{datetime.now():%m%d-%H%M}"
        cfg = TrackingConfig(uri=args.tracking_uri, experiment=EXPERIMENT, run_name=name)
        run_id = track(data, [stem.with_suffix(".json"), stem.with_suffix(".png")], params, cfg)
        logger.info("MLflow run %s (experiment %s)", run_id, EXPERIMENT)
    return points


if __name__ == "__main__":
    main()
