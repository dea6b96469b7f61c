"""Per-feature statistics of a data set, read exactly as training reads it.

Rows come through the loader's read path (`recsys.data.reader`: same files, same number
parsing, same bad rows dropped or failing per data.on_bad_row), dense values through the
featurizer's own `dense_values`, id lists through its `id_lists`.

For every feature of the schema: rows, missing rate, approximate distinct count (HyperLogLog),
and for sparse features the expected collision rate of their table; id lists also get list
lengths. Dense features get min / mean / max of their present raw values, mean / std of those
values after clip and transform, and the suggested mean / std: those of what the model sees
before standardization (missing values filled, clipped, transformed), the values to put in
`data.features.<f>.mean` / `.std`.

Expected collision rate: with n distinct ids hashed uniformly into the B - 1 buckets a table has
for ids (bucket 0 is kept for missing ids), an id shares its bucket with at least one other id
with probability 1 - (1 - 1/(B-1))^(n-1). Features that share a table share its buckets: n is
the sum of their distinct counts (their ids are hashed with different seeds, so they are
different keys even when the raw text is equal).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from recsys.config import DataConfig, FeatureKind
from recsys.data.featurize import dense_values, id_lists
from recsys.data.hll import DEFAULT_PRECISION, HyperLogLog
from recsys.data.reader import RowReader
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat
from recsys.schema import ResolvedFeature, Schema


@dataclass(frozen=True)
class StatsOptions:
    """max_rows: stop after this many rows (None: read everything); progress: a bar on stderr."""

    max_rows: int | None = None
    progress: bool = False
    batch_rows: int = 1 << 16
    hll_precision: int = DEFAULT_PRECISION


@dataclass
class FeatureStats:
    name: str
    kind: str
    column: str
    rows: int = 0
    missing: int = 0
    distinct: float | None = None  # sparse: approximate distinct raw ids
    table: str | None = None
    num_buckets: int | None = None
    collision_rate: float | None = None  # sparse: expected share of ids sharing a bucket
    list_length: dict[str, float] | None = None  # id_list: min / mean / max ids per row
    # dense: min / mean / max (present raw values), transformed_mean / _std (present values
    # clipped and transformed), suggested_mean / _std (every row as the model sees it)
    values: dict[str, float] | None = None

    @property
    def missing_rate(self) -> float:
        return self.missing / self.rows if self.rows else float("nan")


@dataclass
class DatasetStats:
    path: str
    rows: int = 0
    label_rate: float | None = None  # share of positive labels
    bad_rows: dict[str, int] = field(default_factory=dict)  # skipped (data.on_bad_row=skip)
    rows_padded: int = 0  # Criteo lines read with missing trailing fields added
    features: list[FeatureStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        for f, d in zip(self.features, out["features"], strict=True):
            d["missing_rate"] = f.missing_rate
        return out

    def write_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)


def expected_collision_rate(distinct: float, num_buckets: int) -> float:
    """Share of `distinct` ids that share their bucket with another id (uniform hashing)."""
    if distinct <= 1:
        return 0.0
    if num_buckets <= 2:
        return 1.0
    return -math.expm1((distinct - 1) * math.log1p(-1.0 / (num_buckets - 1)))


def compute_stats(
    data: DataConfig, schema: Schema, path: str, options: StatsOptions | None = None
) -> DatasetStats:
    """Read the rows under `path` (as `data` describes them) and summarize every feature."""
    options = options or StatsOptions()
    fmt = SourceFormat.from_config(data)
    reader = RowReader(path, fmt, schema)
    accumulators = {f.name: _accumulator(f, options) for f in schema.features}
    label = _LabelAccumulator(schema)
    stats = DatasetStats(path=path)
    bad = BadRowLog(skip=fmt.skip_bad_rows)
    with tqdm(total=options.max_rows, unit="row", disable=not options.progress) as bar:
        for table in first_rows(reader.rows(bad, options.batch_rows), options.max_rows):
            stats.rows += table.num_rows
            label.add(table.column(schema.label.column))
            for feature in schema.features:
                accumulators[feature.name].add(table.column(feature.column))
            bar.update(table.num_rows)
    stats.label_rate = label.rate()
    stats.bad_rows = dict(bad.counts)
    stats.rows_padded = bad.padded
    stats.features = [accumulators[f.name].result() for f in schema.features]
    _fill_collisions(stats.features, schema)
    return stats


def first_rows(blocks: Iterator[pa.Table], max_rows: int | None) -> Iterator[pa.Table]:
    left = max_rows if max_rows is not None else math.inf
    for block in blocks:
        if left <= 0:
            return
        block = block.slice(0, min(block.num_rows, left)) if left < block.num_rows else block
        left -= block.num_rows
        yield block


def _fill_collisions(features: list[FeatureStats], schema: Schema) -> None:
    per_table: dict[str, float] = {}
    for f in features:
        if f.table is not None:
            per_table[f.table] = per_table.get(f.table, 0.0) + (f.distinct or 0.0)
    for f in features:
        if f.table is not None:
            # The hash space of the feature's first lookup: a qr table's virtual N buckets.
            f.num_buckets = schema.lookups_of(f.name)[0].hash_buckets
            f.collision_rate = expected_collision_rate(per_table[f.table], f.num_buckets)


# ---------------------------------------------------------------------------- accumulators


class _LabelAccumulator:
    def __init__(self, schema: Schema):
        self.threshold = schema.label.threshold
        self.positives = 0
        self.rows = 0

    def add(self, column: pa.ChunkedArray) -> None:
        values = np.asarray(column.to_numpy(), dtype=np.float64)  # checked: no missing labels
        positive = values >= self.threshold if self.threshold is not None else values == 1.0
        self.positives += int(positive.sum())
        self.rows += len(values)

    def rate(self) -> float | None:
        return self.positives / self.rows if self.rows else None


class _IdAccumulator:
    def __init__(self, feature: ResolvedFeature, options: StatsOptions):
        self.feature = feature
        self.hll = HyperLogLog(options.hll_precision)
        self.rows = self.missing = 0

    def add(self, column: pa.ChunkedArray) -> None:
        text = id_text(column)
        self.rows += len(text)
        self.missing += text.null_count
        self.hll.add(text)

    def result(self) -> FeatureStats:
        feature = self.feature
        return FeatureStats(
            feature.name,
            feature.kind.value,
            feature.column,
            rows=self.rows,
            missing=self.missing,
            distinct=self.hll.estimate(),
            table=feature.table,
        )


class _ListAccumulator(_IdAccumulator):
    def __init__(self, feature: ResolvedFeature, options: StatsOptions):
        super().__init__(feature, options)
        self.min_len, self.max_len, self.total = math.inf, 0, 0

    def add(self, column: pa.ChunkedArray) -> None:
        lists = id_lists(column, self.feature)
        lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
        rows = pc.list_parent_indices(lists).to_numpy()
        ids = id_text(pc.list_flatten(lists))
        present = ~np.asarray(pc.is_null(ids).to_numpy(zero_copy_only=False))
        lengths = np.bincount(rows[present], minlength=len(lists))
        self.rows += len(lists)
        self.missing += int((lengths == 0).sum())
        self.total += int(lengths.sum())
        if len(lengths):
            self.min_len = min(self.min_len, int(lengths.min()))
            self.max_len = max(self.max_len, int(lengths.max()))
        self.hll.add(ids)

    def result(self) -> FeatureStats:
        stats = super().result()
        mean = self.total / self.rows if self.rows else float("nan")
        low = self.min_len if self.rows else float("nan")
        stats.list_length = {"min": low, "mean": mean, "max": self.max_len}
        return stats


class _Moments:
    """Count, mean and variance of a stream of blocks (Chan et al.: no catastrophic
    cancellation, unlike sums of squares)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        n, mean = len(values), float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.n * n / total
        self.mean += delta * n / total
        self.n = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else float("nan")

    @property
    def average(self) -> float:
        return self.mean if self.n else float("nan")


class _DenseAccumulator:
    """Raw values as read (present ones only) and the featurizer's `dense_values` of them."""

    def __init__(self, feature: ResolvedFeature):
        self.feature = feature
        self.rows = self.missing = 0
        self.low, self.high = math.inf, -math.inf
        self.raw, self.transformed, self.seen = _Moments(), _Moments(), _Moments()

    def add(self, column: pa.ChunkedArray) -> None:
        present = ~np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False))
        raw = np.asarray(column.to_numpy(), dtype=np.float64)[present]  # checked: finite
        seen = dense_values(column, self.feature)  # what the model sees, before standardizing
        self.rows += len(present)
        self.missing += len(present) - len(raw)
        if len(raw):
            self.low, self.high = min(self.low, raw.min()), max(self.high, raw.max())
        self.raw.add(raw)
        self.transformed.add(seen[present])
        self.seen.add(seen)

    def result(self) -> FeatureStats:
        feature, n = self.feature, self.raw.n
        values = {
            "min": self.low if n else float("nan"),
            "mean": self.raw.average,
            "max": self.high if n else float("nan"),
            "transformed_mean": self.transformed.average,
            "transformed_std": self.transformed.std,
            "suggested_mean": self.seen.average,
            "suggested_std": self.seen.std,
        }
        return FeatureStats(
            feature.name,
            feature.kind.value,
            feature.column,
            rows=self.rows,
            missing=self.missing,
            values=values,
        )


def _accumulator(feature: ResolvedFeature, options: StatsOptions):
    if feature.kind is FeatureKind.dense:
        return _DenseAccumulator(feature)
    if feature.kind is FeatureKind.id_list:
        return _ListAccumulator(feature, options)
    return _IdAccumulator(feature, options)


def id_text(column: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """Ids as text with missing ones (null or "") as nulls, as the hashing treats them."""
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


# ---------------------------------------------------------------------------- report


def format_table(stats: DatasetStats) -> str:
    """A fixed-width table, one line per feature."""
    rate = "n/a" if stats.label_rate is None else f"{stats.label_rate:.4f}"
    lines = [f"{stats.path}: {stats.rows:,} rows, label rate {rate}"]
    if stats.bad_rows:
        lines.append(f"skipped bad rows (data.on_bad_row=skip): {stats.bad_rows}")
    if stats.rows_padded:
        lines.append(f"rows with missing trailing fields, read padded: {stats.rows_padded:,}")
    lines.append("")
    header = f"{'feature':<16} {'kind':<8} {'missing':>8} {'distinct':>12} {'buckets':>11} {'collide':>8}  details"
    lines += [header, "-" * len(header)]
    for f in stats.features:
        distinct = f"{f.distinct:,.0f}" if f.distinct is not None else ""
        buckets = f"{f.num_buckets:,}" if f.num_buckets is not None else ""
        collide = f"{f.collision_rate:.2%}" if f.collision_rate is not None else ""
        lines.append(
            f"{f.name:<16} {f.kind:<8} {f.missing_rate:>8.2%} {distinct:>12} {buckets:>11} "
            f"{collide:>8}  {_details(f)}"
        )
    return "\n".join(lines)


def _details(f: FeatureStats) -> str:
    if f.list_length is not None:
        n = f.list_length
        return f"ids/row min {n['min']:g} mean {n['mean']:.2f} max {n['max']:g}"
    if f.values is not None:
        v = f.values
        return (
            f"min {v['min']:g} mean {v['mean']:.4g} max {v['max']:g}; transformed mean "
            f"{v['transformed_mean']:.4g} std {v['transformed_std']:.4g}; suggested mean "
            f"{v['suggested_mean']:.4g} std {v['suggested_std']:.4g}"
        )
    return f"table {f.table}" if f.table and f.table != f.name else ""
