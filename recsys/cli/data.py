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
runs the command `recsys.cli.data_parser` parsed, calling them and printing what they return.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from recsys.cli.data_parser import build_parser, stats_parser

EXIT_ERROR = 2
"""Exit status when the input, the options or the data could not be used."""

logger = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    from recsys.data.infer import InferOptions, infer_data_config, one_path
    from recsys.data.infer_yaml import to_yaml

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
        args = stats_parser().parse_intermixed_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
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
