"""A starter data config from the files themselves (`recsys-data infer-schema`).

Two passes over the first `max_rows` rows, both through the loader's read path:

1. `recsys.data.profile`: every raw column profiled (numbers or not, range, 0/1, lists,
   distinct count), from which each column's kind is guessed;
2. the guessed config run through `recsys.data.stats.compute_stats`, the statistics training
   relies on: the mean / std of each dense feature after the very clip and transform the model
   applies (`featurize.dense_values`), and each sparse feature's distinct ids, which size its
   table.

Guesses (each written as a comment beside its feature, to be checked):

    label    --label, or the first 0/1 column named like label, click(ed), target, y, ...
    id_list  a list column, or text whose values are joined by "|" or ";" (>= 10% of them)
    id       text (numbers with a leading zero, "021", are text); integers named like an id
             (user_id, itemId, uid, ...); integers with at most 16 distinct values (flags,
             codes, small ordinals)
    dense    other numbers; transform log1p when they look like counts: at most 1% negative,
             a heavy tail (max >= 100 and >= 10 x mean)
    skipped  time stamps (by type or name, or integers that all read as date codes:
             YYMMDDHH, YYYYMMDD[HH], Unix seconds or milliseconds; as a number they only
             grow with time, so eval rows lie past every trained value), row keys (text or
             id-named integers whose values never repeat within a block of rows read and
             are >= 90% distinct overall: an id seen once teaches nothing), constant or empty columns, nested or binary values, other
             columns named like a label (outcomes: features would leak them)

num_buckets: the power of two at or above 100 x distinct ids while that is at most 65,536
rows (small vocabularies: ~1% of ids share a row, for at most 4 MiB at dim 16), else at or
above 4 x distinct, at most `max_buckets` (2**20). With n ids in B rows an id shares its row
with probability ~ 1 - exp(-n/B): 12-22% at 4x (mostly rare ids); raise the capped tables'
num_buckets where memory allows (`recsys-data stats` reports collision rates).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime

import pyarrow.types as pat

from recsys.config import (
    ConfigError,
    DataConfig,
    DataFormat,
    DenseTransform,
    FeatureKind,
    FeatureSpec,
    LabelSpec,
    TableSpec,
)
from recsys.data.profile import ColumnProfile, column_types, profile_columns
from recsys.data.source import resolve_files
from recsys.data.stats import DatasetStats, FeatureStats, StatsOptions, compute_stats
from recsys.schema import resolve_schema

LABEL_NAMES = ("label", "click", "clicked", "clicks", "is_click", "clk", "target", "y")
LABEL_NAMES += ("conversion", "converted", "is_converted")
TIME_NAMES = ("timestamp", "time", "ts", "date", "datetime", "event_time", "created_at")
FEW_DISTINCT = 16  # integer columns with at most this many values are read as ids
# A row key: no value twice within any block read, and this share distinct overall. Not the
# share alone: a long-tailed id (most ids once, a head seen often) still teaches through its head.
ROW_KEY_SHARE = 0.9
ROW_KEY_MIN_ROWS = 1000  # fewer rows say little: in a small sample most ids are unique
_DATE_CODES = {  # digits -> (strptime layout, name)
    8: (("%y%m%d%H", "YYMMDDHH"), ("%Y%m%d", "YYYYMMDD")),
    10: (("%Y%m%d%H", "YYYYMMDDHH"),),
}
_UNIX_SECONDS = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01
SMALL_TABLE = 1 << 16  # tables this small get 100 rows per id: ~1% of ids collide
_ID_NAME = re.compile(
    r"(^|[_\-. ])(id|uid|ids)$|(user|item|ad|session|device|app|product|movie|song|article|doc"
    r"|query|page|campaign|creative|site|advertiser)_?id$"
)
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".txt": "tsv"}


@dataclass(frozen=True)
class InferOptions:
    """How to guess. label / threshold: the label column (label = value >= threshold when
    set); ids / dense: columns forced to that kind; max_rows: rows read by each pass."""

    name: str
    label: str | None = None
    threshold: float | None = None
    format: DataFormat | None = None  # None: from the first file's extension
    eval_path: str | None = None
    ids: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    max_rows: int | None = 1_000_000
    max_buckets: int = 1 << 20
    progress: bool = False


@dataclass(frozen=True)
class Guess:
    column: str
    kind: FeatureKind | None  # None: not a feature (skipped)
    reason: str
    transform: DenseTransform = DenseTransform.none
    delimiter: str | None = None


@dataclass
class InferredConfig:
    data: DataConfig
    guesses: list[Guess]  # every column but the label, in file order
    stats: DatasetStats  # of the written config, over the rows read
    rows: int


def infer_data_config(path: str, options: InferOptions) -> InferredConfig:
    """Guess a data config for the rows under `path` (file, folder, glob or URI)."""
    fs, _, files = resolve_files(path)
    fmt = options.format or guess_format(files[0])
    types = column_types(fs, files[0], fmt)
    profiles, rows = profile_columns(path, fmt, types, options.max_rows)
    label, threshold = _label(profiles, list(types), options)
    guesses = [_guess(c, profiles.get(c), options) for c in types if c != label]
    features: dict[str, FeatureSpec] = {}
    for g in guesses:
        if g.kind is not None:
            features[feature_name(g.column, features)] = FeatureSpec(
                kind=g.kind, column=g.column, transform=g.transform, delimiter=g.delimiter
            )
    sparse = [spec for spec in features.values() if spec.kind is not FeatureKind.dense]
    if not sparse:
        raise ConfigError(f"{path}: no column looks like an id; name some with --id COL.")
    for seed, spec in enumerate(sparse, start=1):
        spec.seed = seed
    for name, spec in features.items():
        spec.column = None if spec.column == name else spec.column
    data = DataConfig(
        name=options.name,
        train_path=_absolute(path),
        eval_path=None if options.eval_path is None else _absolute(options.eval_path),
        format=fmt,
        label=LabelSpec(column=label, threshold=threshold),
        features=features,
    )
    schema = resolve_schema(data, 16)
    stats_options = StatsOptions(max_rows=options.max_rows, progress=options.progress)
    stats = compute_stats(data, schema, path, stats_options)
    _fill_from_stats(data, stats, options.max_buckets)
    return InferredConfig(data, guesses, stats, rows)


def one_path(paths: list[str]) -> str:
    """One data path for several files (as a shell glob expands): the file itself, or the
    folder or `folder/*.ext` glob that names exactly those files."""
    if len(paths) == 1:
        return paths[0]
    given = {os.path.abspath(p) for p in paths}
    folders = {os.path.dirname(p) for p in given}
    if len(folders) == 1:
        folder = folders.pop()
        exts = {os.path.splitext(p)[1] for p in given}
        globs = [os.path.join(folder, f"*{e}") for e in exts] if len(exts) == 1 else []
        for candidate in [*globs, folder]:
            if set(resolve_files(candidate)[2]) == given:
                return candidate
    raise ConfigError(
        f"{len(paths)} paths given, but no folder or glob names exactly them; give one file, "
        f"folder or quoted glob (e.g. 'logs/day_*.parquet')."
    )


def guess_format(file: str) -> DataFormat:
    name = file.lower()
    for suffix in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return DataFormat(fmt)
    raise ConfigError(
        f"{file}: cannot tell the format from its name; pass --format parquet|csv|tsv|criteo."
    )


def feature_name(column: str, taken: dict) -> str:
    """A name usable as a config key (letters, digits, _), not yet in `taken`."""
    name = re.sub(r"\W+", "_", column).strip("_") or "column"
    if name[0].isdigit() or name.lower() in ("true", "false", "null", "yes", "no", "on", "off"):
        name = f"f_{name}"
    base, i = name, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def num_buckets_for(distinct: float, max_buckets: int) -> int:
    """The power of two at or above 4 x distinct, or 100 x distinct up to SMALL_TABLE rows;
    at most max_buckets (see the module docstring)."""
    n = max(1, round(distinct))
    want = max(4 * n, min(100 * n, SMALL_TABLE))
    return min(max_buckets, 1 << (want - 1).bit_length())


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


# ------------------------------------------------------------------------- guesses


def _label(
    profiles: dict[str, ColumnProfile], columns: list[str], options: InferOptions
) -> tuple[str, float | None]:
    if options.label is not None:
        profile = profiles.get(options.label)
        if profile is None:
            raise ConfigError(f"--label {options.label}: no such column; columns: {columns}.")
        if options.threshold is None and not profile.zero_one():
            values = sorted(profile.small) if profile.small is not None else "many values"
            raise ConfigError(
                f"--label {options.label}: not every value is 0 or 1 ({values}); pass "
                f"--threshold T (label = value >= T) or write a 0/1 column."
            )
        return options.label, options.threshold
    for name in columns:
        if name.lower() in LABEL_NAMES and name in profiles and profiles[name].zero_one():
            return name, None
    flags = [n for n in columns if n in profiles and profiles[n].zero_one()]
    raise ConfigError(
        f"no label column found (a 0/1 column named one of {list(LABEL_NAMES)}); pass "
        f"--label COL. Columns: {columns}; of them 0/1: {flags or 'none'}."
    )


def _guess(name: str, profile: ColumnProfile | None, options: InferOptions) -> Guess:
    if profile is None:
        return Guess(name, None, "skipped: nested or binary values")
    if name in options.ids:
        return Guess(name, _sparse_kind(profile), "--id")
    if name in options.dense:
        if not profile.numeric:
            raise ConfigError(f"--dense {name}: the column holds values that are not numbers.")
        return Guess(name, FeatureKind.dense, f"--dense; {_range(profile)}", _transform(profile))
    if name.lower() in LABEL_NAMES:
        return Guess(name, None, "skipped: named like a label, an outcome (--id to keep)")
    if profile.present == 0 or profile.distinct < 1.5:
        return Guess(name, None, "skipped: constant or empty")
    temporal = profile.type is not None and pat.is_temporal(profile.type)
    if temporal or name.lower() in TIME_NAMES:
        return Guess(name, None, "skipped: looks like a time stamp (--id or --dense to keep)")
    if profile.is_list:
        return Guess(name, FeatureKind.id_list, "list")
    if not profile.numeric:
        for d, count in profile.delimited.items():
            if count >= 0.1 * profile.present:
                return Guess(name, FeatureKind.id_list, f"{d!r}-joined lists", delimiter=d)
        return _unless_row_key(Guess(name, FeatureKind.id, "text"), profile)
    if _ID_NAME.search(name.lower()) or re.search(r"[a-z]Id$", name):
        return _unless_row_key(Guess(name, FeatureKind.id, "named like an id"), profile)
    if profile.integral and round(profile.distinct) <= FEW_DISTINCT:
        return Guess(name, FeatureKind.id, f"{_range(profile)}: few values")
    if profile.integral and _time_code(profile.low, profile.high):
        reason = f"{_range(profile)} read as {_time_code(profile.low, profile.high)}"
        return Guess(
            name, None, f"skipped: looks like a time stamp ({reason}; --id or --dense to keep)"
        )
    return Guess(name, FeatureKind.dense, _range(profile), _transform(profile))


def _unless_row_key(guess: Guess, profile: ColumnProfile) -> Guess:
    """Skipped instead when every row has its own value (a request or event id)."""
    few = profile.present < ROW_KEY_MIN_ROWS
    if few or profile.repeats or profile.distinct < ROW_KEY_SHARE * profile.present:
        return guess
    return Guess(
        guess.column,
        None,
        f"skipped: looks like a row key (~{profile.distinct:,.0f} distinct in "
        f"{profile.present:,} rows: an id seen once teaches nothing; --id to keep)",
    )


def _time_code(low: float, high: float) -> str | None:
    """How integers from `low` to `high` read as time stamps, or None when they do not."""
    for scale, unit in ((1, "Unix seconds"), (1000, "Unix milliseconds")):
        if _UNIX_SECONDS[0] * scale <= low <= high < _UNIX_SECONDS[1] * scale:
            return unit
    digits = len(str(int(low)))
    for layout, layout_name in _DATE_CODES.get(digits, ()):
        if len(str(int(high))) == digits and all(_is_date(v, layout) for v in (low, high)):
            return layout_name
    return None


def _is_date(value: float, layout: str) -> bool:
    try:
        datetime.strptime(str(int(value)), layout)
    except ValueError:
        return False
    return True


def _sparse_kind(profile: ColumnProfile) -> FeatureKind:
    return FeatureKind.id_list if profile.is_list else FeatureKind.id


def _transform(profile: ColumnProfile) -> DenseTransform:
    tail = profile.high >= max(100.0, 10 * profile.mean)
    counts = profile.negatives <= 0.01 * profile.present and tail
    return DenseTransform.log1p if counts else DenseTransform.none


def _range(profile: ColumnProfile) -> str:
    what = "integers" if profile.integral else "numbers"
    return f"{what} {profile.low:.10g}..{profile.high:.10g}"


# ------------------------------------------------------------------------- pass 2: stats


def _fill_from_stats(data: DataConfig, stats: DatasetStats, max_buckets: int) -> None:
    for f in stats.features:
        spec = data.features[f.name]
        if f.values is not None:
            spec.std = _round(f.values["suggested_std"]) or 1.0
            spec.mean = _round_to_std(f.values["suggested_mean"], spec.std)
        else:
            data.tables[f.name] = TableSpec(num_buckets=num_buckets_for(f.distinct, max_buckets))


def _round(x: float) -> float:
    return float(f"{x:.4g}") if math.isfinite(x) else 0.0


def _round_to_std(mean: float, std: float) -> float:
    """The mean to 1/1000 of a std: 4 significant digits would move a mean of 14,102,512
    with std 245 by 10 std (date codes, ids as numbers)."""
    if not math.isfinite(mean):
        return 0.0
    step = 10.0 ** (math.floor(math.log10(std)) - 3)
    return float(f"{round(mean / step) * step:.12g}")


# ------------------------------------------------------------------------- YAML


def to_yaml(inferred: InferredConfig, command: str) -> str:
    """The config as YAML, each feature with the reason of its guess as a comment."""
    data = inferred.data
    stats = {f.name: f for f in inferred.stats.features}
    reasons = {g.column: g.reason for g in inferred.guesses}
    lines = [
        f"# Starter data config written by `{command}`",
        f"# from the first {inferred.rows:,} rows. Check every guess (the comment after each",
        f"# feature says why), then train: recsys-train --config-dir DIR data={data.name}",
        f"# (this file being DIR/data/{data.name}.yaml).",
        f"name: {_scalar(data.name)}",
        f"train_path: {_scalar(data.train_path)}",
        f"eval_path: {_scalar(data.eval_path)}"
        + ("  # set it, or pass data.eval_path=PATH when training" if not data.eval_path else ""),
        f"format: {data.format.value}",
        f"label: {_flow(_label_entry(data.label))}",
        "features:",
    ]
    for name, spec in data.features.items():
        reason = f"{reasons[spec.column or name]}; {_seen(stats[name])}"
        lines.append(f"  {name}: {_flow(_feature_entry(spec))}  # {reason}")
    lines += [f"  # {g.column}: {g.reason}" for g in inferred.guesses if g.kind is None]
    lines.append("tables:")
    for name, table in data.tables.items():
        lines.append(f"  {name}: {{num_buckets: {table.num_buckets}}}")
    return "\n".join(lines) + "\n"


def _seen(f: FeatureStats) -> str:
    missing = f"{f.missing_rate:.0%} missing"
    return missing if f.distinct is None else f"{f.distinct:,.0f} distinct, {missing}"


def _label_entry(label: LabelSpec) -> dict:
    entry: dict = {"column": label.column}
    if label.threshold is not None:
        entry["threshold"] = label.threshold
    return entry


def _feature_entry(spec: FeatureSpec) -> dict:
    entry: dict = {"kind": spec.kind.value}
    if spec.column is not None:
        entry["column"] = spec.column
    if spec.kind is FeatureKind.dense:
        entry |= {"transform": spec.transform.value, "mean": spec.mean, "std": spec.std}
    else:
        entry["seed"] = spec.seed
    if spec.delimiter is not None:
        entry["delimiter"] = spec.delimiter
    return entry


def _flow(entry: dict) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in entry.items()) + "}"


def _scalar(value) -> str:
    """A YAML scalar: plain where that reads back as the same string, else JSON-quoted."""
    if value is None:
        return "null"
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_/.][A-Za-z0-9_./\-]*", value)
        reserved = value.lower() in ("true", "false", "null", "yes", "no", "on", "off", "~")
        return value if plain and not reserved else json.dumps(value)
    if isinstance(value, float):
        text = repr(float(f"{value:.12g}"))
        mantissa = text.split("e")[0]
        return text.replace("e", ".0e") if "e" in text and "." not in mantissa else text
    return str(value)
