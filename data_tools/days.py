"""Day folders for `make train-days`: a time-ordered log split by day or week, and synthetic
days with drift planted.

    python -m data_tools.days split data/movielens/train.parquet data/movielens/eval.parquet \\
        --out data/movielens_weeks --period week
    python -m data_tools.days synth --out data/drift_days --days 8

`split` writes `OUT/<period>=<first date>/part-0.parquet` (UTC dates; a week starts on
Monday), so the folders sort in time order. `synth` writes MovieLens-shaped days (the columns
of `recsys-data movielens`, so `data=movielens` reads them) from a planted logistic model that
drifts: every day a share of the users are new (ids never used before), item effects take a
random-walk step, and the base click rate moves; `REPORT_FILE` lists, per day, the planted
CTR, new-user share and the best AUC (that of the true click probabilities).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.cli.args import count

REPORT_FILE = "days.json"
_PERIOD_SECONDS = {"day": 86_400, "week": 7 * 86_400}
_MONDAY_OFFSET = 3 * 86_400  # 1970-01-01 was a Thursday: weeks since the Monday before it


def split_by_time(
    paths: list[str], out: Path, column: str = "timestamp", period: str = "day"
) -> list[Path]:
    """Split time-ordered logs (Parquet; `column` in Unix seconds) into one folder per day or
    week. Returns the folders written, in time order."""
    table = pa.concat_tables([pq.read_table(p) for p in paths], promote_options="default")
    seconds = table.column(column).to_numpy().astype(np.int64)
    size = _PERIOD_SECONDS[period]
    offset = _MONDAY_OFFSET if period == "week" else 0
    bucket = (seconds + offset) // size
    order = np.argsort(seconds, kind="stable")
    table, bucket = table.take(pa.array(order)), bucket[order]
    folders = []
    for b in np.unique(bucket):
        start = np.datetime64(int(b * size - offset), "s").astype("datetime64[D]")
        folder = Path(out) / f"{period}={start}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = table.filter(pa.array(bucket == b))
        pq.write_table(rows, folder / "part-0.parquet")
        folders.append(folder)
    return folders


def drifting_days(
    out: Path,
    days: int = 8,
    rows_per_day: int = 20_000,
    seed: int = 0,
    users_per_day: int = 2_000,
    new_user_share: float = 0.3,
    num_items: int = 1_000,
    item_drift: float = 0.35,
    ctr_drift: float = 0.25,
) -> list[Path]:
    """MovieLens-shaped days from a drifting planted model (see the module docstring)."""
    rng = np.random.default_rng(seed)
    item_vec, item_bias = rng.normal(size=(num_items, 4)), rng.normal(size=num_items)
    users = np.arange(1, users_per_day + 1)
    next_user, base, report, folders = users_per_day + 1, -0.8, [], []
    for day in range(days):
        if day > 0:  # a share of today's users are new; the rest are yesterday's
            keep = rng.random(len(users)) >= new_user_share
            fresh = np.arange(next_user, next_user + int((~keep).sum()))
            next_user += len(fresh)
            users = np.concatenate([users[keep], fresh])
            item_bias = item_bias + rng.normal(scale=item_drift, size=num_items)
            base += rng.normal(scale=ctr_drift)
        table, p_true = _day_rows(rng, users, item_vec, item_bias, base, rows_per_day, day)
        folder = Path(out) / f"day={day:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0.parquet")
        folders.append(folder)
        report.append({"day": folder.name, "ctr": float(p_true.mean()), "base_logit": base})
    (Path(out) / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return folders


def _user_factors(users: np.ndarray) -> np.ndarray:
    """Each user's planted factors: a hash of the id, so a user keeps them across days."""
    return np.stack([np.random.default_rng(int(u)).normal(size=4) for u in users])


def _day_rows(
    rng: np.random.Generator,
    users: np.ndarray,
    item_vec: np.ndarray,
    item_bias: np.ndarray,
    base: float,
    rows: int,
    day: int,
) -> tuple[pa.Table, np.ndarray]:
    user = users[rng.integers(0, len(users), rows)]
    item = np.minimum(rng.zipf(1.3, rows) - 1, len(item_bias) - 1)
    factors = _user_factors(np.unique(user))
    lookup = {u: i for i, u in enumerate(np.unique(user))}
    u_vec = factors[np.array([lookup[u] for u in user])]
    logit = base + 0.7 * (u_vec * item_vec[item]).sum(1) + item_bias[item]
    p_true = 1 / (1 + np.exp(-logit))
    label = (rng.random(rows) < p_true).astype(np.int8)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller"]
    table = pa.table(
        {
            "label": pa.array(label, pa.int8()),
            "user_id": pa.array(user, pa.int64()),
            "item_id": pa.array(item + 1, pa.int64()),
            "timestamp": pa.array(day * 86_400 + np.sort(rng.integers(0, 86_400, rows))),
            "rating": pa.array(np.where(label == 1, 4, 2), pa.int8()),
            "gender": pa.array(np.where(user % 2 == 0, "M", "F")),
            "age": pa.array(18 + user % 40, pa.int64()),
            "age_bucket": pa.array([f"b{u % 5}" for u in user]),
            "occupation": pa.array([f"o{u % 7}" for u in user]),
            "zip_prefix": pa.array([f"{(u * 7) % 100:03d}" for u in user]),
            "genres": pa.array([[genres[i % 7]] for i in item], pa.list_(pa.string())),
            "release_year": pa.array(1990 + item % 9, pa.int64()),
            "p_true": pa.array(p_true),
        }
    )
    return table, p_true


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The `split` and `synth` commands, for this module's CLI and `recsys-data days`."""
    split = commands.add_parser(
        "split",
        help="split time-ordered Parquet logs by day or week",
        description="Write OUT/<period>=<first date>/part-0.parquet (UTC dates; a week starts "
        "on Monday), so the folders sort in time order.",
    )
    split.add_argument("inputs", nargs="+", help="Parquet files with COLUMN in Unix seconds")
    split.add_argument("--out", type=Path, required=True, help="output folder")
    split.add_argument(
        "--period",
        choices=sorted(_PERIOD_SECONDS),
        default="day",
        help="a folder per day, or per week from Monday (default: %(default)s)",
    )
    split.add_argument(
        "--column", default="timestamp", help="the time column, Unix seconds (default: %(default)s)"
    )
    synth = commands.add_parser(
        "synth",
        help="synthetic days with drift planted",
        description="Write OUT/day=<d>/part-0.parquet with the columns of `recsys-data "
        "movielens` (data=movielens reads them) from a drifting planted model, and the "
        "planted CTR per day in OUT/days.json.",
    )
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--days", type=count, default=8, help="day folders (default: %(default)s)")
    synth.add_argument("--rows", type=count, default=20_000, help="rows a day (default 20000)")
    synth.add_argument(
        "--seed", type=int, default=0, help="the planted model and draws (default 0)"
    )


def run(command: str, args: argparse.Namespace) -> list[Path]:
    """Run `split` or `synth` with the options `add_commands` parsed; the folders written."""
    if command == "split":
        folders = split_by_time(args.inputs, args.out, args.column, args.period)
    else:
        folders = drifting_days(args.out, args.days, args.rows, args.seed)
    print(f"{len(folders)} folders under {args.out}: {folders[0].name} .. {folders[-1].name}")
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.days", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    run(args.command, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["add_commands", "drifting_days", "run", "split_by_time"]
