"""A starter data config from the files themselves (`recsys-data infer-schema`).

Two passes over the first `max_rows` rows, both through the loader's read path:

1. `recsys.data.profile`: every raw column profiled (numbers or not, range, 0/1, lists,
   distinct count), from which the label and each column's kind are guessed
   (`recsys.data.infer_guess`, whose docstring lists the rules);
2. the guessed config run through `recsys.data.stats.compute_stats`, the statistics training
   relies on: the mean / std of each dense feature after the very clip and transform the model
   applies (`featurize.dense_values`), and each sparse feature's distinct ids, which size its
   table.

The result is written as commented YAML by `recsys.data.infer_yaml.to_yaml`.

num_buckets: the power of two at or above 100 x distinct ids while that is at most 65,536
rows (small vocabularies: ~1% of ids share a row, for at most 4 MiB at dim 16), else at or
above 4 x distinct, at most `max_buckets` (2**20). With n ids in B rows an id shares its row
with probability ~ 1 - exp(-n/B): 12-22% at 4x (mostly rare ids); raise the capped tables'
num_buckets where memory allows (`recsys-data stats` reports collision rates).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from recsys.config import (
    ConfigError,
    DataConfig,
    DataFormat,
    FeatureKind,
    FeatureSpec,
    LabelSpec,
    TableSpec,
)
from recsys.data.infer_guess import Guess, guess_column, guess_label
from recsys.data.profile import column_types, profile_columns
from recsys.data.source import resolve_files
from recsys.data.stats import DatasetStats, StatsOptions, compute_stats
from recsys.schema import resolve_schema

SMALL_TABLE = 1 << 16  # tables this small get 100 rows per id: ~1% of ids collide
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
    label, threshold = guess_label(profiles, list(types), options.label, options.threshold)
    guesses = [
        guess_column(c, profiles.get(c), options.ids, options.dense) for c in types if c != label
    ]
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
