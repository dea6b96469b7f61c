"""Synthetic click logs of any size, drawn from a planted model, streamed to Parquet or TSV.

Layout `criteo`: `label`, `I1`..`I13` (integer counts), `C1`..`C26` (8-hex-digit ids, 16 hex
digits when a column has more than 2^32 distinct ids); any value but the label may be missing.
Parquet output adds `p_true`, the click probability the label was drawn from, so
AUC(label, p_true) is the best AUC any model can reach on the data.

How it scales:
* Ids: column c has `distinct[c]` possible ids; rank k in [1, n] is drawn from a bounded Zipf
  law P(k) ~ k^-s by inverse CDF (exact for the first `HEAD_RANKS` ranks, the midpoint
  integral of x^-s beyond, whose relative error there is below 1e-8), so n can be 10^9+.
  Rank k becomes an id through a bijective integer mixer, and every per-id weight of the
  planted model is a hash of (model_seed, column, rank): nothing is stored per id.
* Rows: randomness is drawn in blocks of `BLOCK_ROWS` rows from a generator seeded by
  (seed, block index). The bytes therefore depend only on the options that change the data
  (seed, model_seed, rows, distinct, zipf, missing rate), never on row-group sizes or file
  counts, and memory is one block plus one row group whatever the number of rows.
* Splits: `seed` draws the rows, `model_seed` fixes the world they come from (which id each
  rank is, every id's effect, the dense distributions). Train and eval logs of one world share
  `model_seed` and differ in `seed`, so a model trained on one can be judged on the other.

The planted model: logit = bias + per-id effects of C1..C8 + a rank-4 interaction between
C9 and C10 (dot product of hashed per-id factors) + weighted, standardized log1p(I1..I4).
Missing values contribute nothing. label ~ Bernoulli(sigmoid(logit)).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from data_tools.arrow_io import RowStream, atomic_path
from data_tools.criteo import ARROW_SCHEMA, CATEGORICAL_COLUMNS, DENSE_COLUMNS, LABEL
from recsys.config import ConfigError

logger = logging.getLogger(__name__)

BLOCK_ROWS = 1 << 16
"""Rows drawn per seeded block; part of the output's definition (changing it changes bytes)."""

HEAD_RANKS = 10_000
"""Ranks whose Zipf weights are summed exactly; the tail uses the integral of x^-s."""

P_TRUE = "p_true"
PARQUET_SCHEMA = ARROW_SCHEMA.append(pa.field(P_TRUE, pa.float64()))
"""The Criteo columns plus `p_true`: what a block holds and what Parquet output stores."""

_AUC_BINS = 1 << 16
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_M32 = np.uint64(0xFFFFFFFF)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

# The planted model (see the module docstring); scales chosen for a Criteo-like CTR (~0.25)
# and a best achievable AUC near 0.8.
EFFECT_COLUMNS = 8  # C1..C8
EFFECT_SCALE = 0.4
PAIR_COLUMNS = (8, 9)  # C9 x C10
PAIR_RANK = 4
PAIR_SCALE = 0.6
DENSE_WEIGHTS = (0.35, -0.25, 0.3, 0.2)  # I1..I4
BIAS = -1.5


class Layout(StrEnum):
    criteo = "criteo"


class OutputFormat(StrEnum):
    parquet = "parquet"
    tsv = "tsv"  # raw Criteo: tab separated, no header, empty = missing, no p_true


@dataclass(frozen=True)
class SynthOptions:
    """What `write_synthetic` generates and how it lays it out on disk.

    Attributes:
        out: output folder; files are `part-00000.parquet` (or `.tsv`, `.tsv.gz`), ...
        rows: total rows over all files.
        seed: draws the rows (same options -> same bytes).
        model_seed: the planted world: ids, per-id effects, dense distributions. Keep it
            for the eval split of a training log and change `seed`.
        layout: column layout (only `criteo` for now).
        format: parquet (with `p_true`) or tsv (raw Criteo).
        distinct: distinct ids per categorical column: one value for all 26, or 26 values.
        zipf: exponent s of P(rank k) ~ k^-s (0 = uniform; ~1 for click logs).
        missing_rate: chance that a value (any column but the label) is missing.
        row_group_rows: rows per Parquet row group.
        files: number of files; rows are split evenly, in order.
        gzip: compress TSV output (`.tsv.gz`).
        progress: show a progress bar on stderr.
    """

    out: str
    rows: int
    seed: int = 0
    model_seed: int = 0
    layout: Layout = Layout.criteo
    format: OutputFormat = OutputFormat.parquet
    distinct: tuple[int, ...] = (1_000_000,)
    zipf: float = 1.05
    missing_rate: float = 0.05
    row_group_rows: int = 1 << 17
    files: int = 1
    gzip: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        problems = [
            (self.rows < 1, f"rows={self.rows}: need >= 1"),
            (not 1 <= self.files <= self.rows, f"files={self.files}: need 1 <= files <= rows"),
            (len(self.distinct) not in (1, len(CATEGORICAL_COLUMNS)), self._distinct_problem()),
            (min(self.distinct, default=0) < 1, f"distinct={self.distinct}: every count >= 1"),
            (self.zipf < 0, f"zipf={self.zipf}: need an exponent >= 0"),
            (not 0 <= self.missing_rate < 1, f"missing_rate={self.missing_rate}: need [0, 1)"),
            (self.row_group_rows < 1, f"row_group_rows={self.row_group_rows}: need >= 1"),
            (self.gzip and self.format is not OutputFormat.tsv, "gzip applies to format=tsv"),
        ]
        for bad, message in problems:
            if bad:
                raise ConfigError(f"synth option {message}.")

    def _distinct_problem(self) -> str:
        return (
            f"distinct has {len(self.distinct)} values: give one (for every column) or "
            f"{len(CATEGORICAL_COLUMNS)} (one per C column)"
        )

    def distinct_of(self, column: int) -> int:
        return self.distinct[0] if len(self.distinct) == 1 else self.distinct[column]


@dataclass
class SynthReport:
    files: list[str]
    rows: int = 0
    clicks: int = 0
    mean_p_true: float = 0.0
    auc_p_true: float = float("nan")  # best achievable AUC (histogram of p_true, 2^16 bins)
    _pos: np.ndarray = field(default_factory=lambda: np.zeros(_AUC_BINS, np.int64), repr=False)
    _neg: np.ndarray = field(default_factory=lambda: np.zeros(_AUC_BINS, np.int64), repr=False)
    _p_sum: float = field(default=0.0, repr=False)

    @property
    def ctr(self) -> float:
        return self.clicks / self.rows if self.rows else float("nan")

    def add(self, labels: np.ndarray, p_true: np.ndarray) -> None:
        bins = np.minimum((p_true * _AUC_BINS).astype(np.int64), _AUC_BINS - 1)
        self._pos += np.bincount(bins[labels == 1], minlength=_AUC_BINS)
        self._neg += np.bincount(bins[labels == 0], minlength=_AUC_BINS)
        self.rows += len(labels)
        self.clicks += int(labels.sum())
        self._p_sum += float(p_true.sum())

    def finish(self) -> None:
        self.mean_p_true = self._p_sum / self.rows
        neg_below = np.cumsum(self._neg) - self._neg
        pairs = self.clicks * (self.rows - self.clicks)
        wins = (self._pos * (neg_below + 0.5 * self._neg)).sum()
        self.auc_p_true = float(wins / pairs) if pairs else float("nan")


class BoundedZipf:
    """P(k) = k^-s / H(n, s) for k in [1, n], sampled by inverse CDF without an n-entry table."""

    def __init__(self, n: int, exponent: float, head: int = HEAD_RANKS):
        self.n, self.s, self.head = n, exponent, min(n, head)
        self._cum = np.cumsum(np.arange(1, self.head + 1, dtype=np.float64) ** -exponent)
        self._a = self.head + 0.5
        tail = self._integral(self._a, n + 0.5) if n > self.head else 0.0
        self.total = float(self._cum[-1]) + tail

    def _integral(self, a: float, b: float) -> float:
        if self.s == 1.0:
            return math.log(b / a)
        return (b ** (1 - self.s) - a ** (1 - self.s)) / (1 - self.s)

    def sample(self, u: np.ndarray) -> np.ndarray:
        """Ranks (int64, 1 = most frequent) for uniforms `u` in [0, 1)."""
        x = u * self.total
        ranks = np.searchsorted(self._cum, x, side="right").astype(np.int64) + 1
        tail = x >= self._cum[-1]
        if tail.any():
            v = x[tail] - self._cum[-1]
            if self.s == 1.0:
                t = self._a * np.exp(v)
            else:
                t = (self._a ** (1 - self.s) + (1 - self.s) * v) ** (1 / (1 - self.s))
            ranks[tail] = np.clip(np.floor(t + 0.5), self.head + 1, self.n).astype(np.int64)
        return ranks


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection on uint64 with full avalanche."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mix32(x: np.ndarray) -> np.ndarray:
    """murmur3's fmix32 on values < 2^32 held in uint64: a bijection on [0, 2^32)."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x85EBCA6B)) & _M32
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(0xC2B2AE35)) & _M32
    return x ^ (x >> np.uint64(16))


def _key(*parts: int) -> np.uint64:
    """A 64-bit key for (seed, column, purpose, ...), mixed so nearby tuples are unrelated."""
    h = 0
    for p in parts:
        h = (h ^ p) + 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return np.uint64(h)


def _hashed_normal(ranks: np.ndarray, key: np.uint64) -> np.ndarray:
    """A standard normal per rank, the same every time (Box-Muller over two hashes)."""
    h1 = _mix64(ranks.astype(np.uint64) ^ key)
    h2 = _mix64(h1 ^ np.uint64(0x632BE59BD9B4E019))
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _hex_ids(ranks: np.ndarray, key: np.uint64, n: int, valid: np.ndarray) -> pa.Array:
    """Distinct ranks -> distinct hex ids (8 digits when n <= 2^32, else 16), nulls where invalid."""
    x = (ranks - 1).astype(np.uint64)
    if n <= 1 << 32:
        values, width = _mix32(x ^ (key & _M32)), 8
    else:
        values, width = _mix64(x ^ key), 16
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
    chars = _HEX[((values[valid, None] >> shifts) & np.uint64(15)).astype(np.intp)]
    offsets = np.zeros(len(ranks) + 1, np.int32)
    np.cumsum(valid * width, out=offsets[1:])
    validity = np.packbits(valid, bitorder="little")
    return pa.StringArray.from_buffers(
        len(ranks),
        pa.py_buffer(offsets),
        pa.py_buffer(chars.tobytes()),
        pa.py_buffer(validity.tobytes()),
        null_count=int(len(valid) - valid.sum()),
    )


def _numeric(values: np.ndarray, kind: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """A numpy array as an Arrow array without a copy (pa.array would import pandas: ~2 s)."""
    validity = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = 0 if valid is None else int(len(valid) - valid.sum())
    data = pa.py_buffer(np.ascontiguousarray(values))
    return pa.Array.from_buffers(kind, len(values), [validity, data], null_count=nulls)


def _to_numpy(table: pa.Table, column: str, dtype: type) -> np.ndarray:
    """A null-free numeric column as numpy, without the pandas import of Arrow's to_numpy."""
    array = table.column(column).combine_chunks()
    data = np.frombuffer(array.buffers()[1], dtype=dtype)
    return data[array.offset : array.offset + len(array)]


class PlantedModel:
    """Draws blocks of rows; per-id weights are hashes, so nothing grows with the id count."""

    def __init__(self, options: SynthOptions):
        self.options = options
        self.zipf = [
            BoundedZipf(options.distinct_of(c), options.zipf)
            for c in range(len(CATEGORICAL_COLUMNS))
        ]
        params = np.random.default_rng([options.model_seed, 0xC0FFEE])  # a few numbers
        self.dense_mu = params.uniform(0.0, 3.0, len(DENSE_COLUMNS))
        self.dense_sigma = params.uniform(0.5, 1.5, len(DENSE_COLUMNS))

    def block(self, index: int, n: int = BLOCK_ROWS) -> pa.Table:
        """Block `index`: rows from index * BLOCK_ROWS on; `n` < BLOCK_ROWS for the last one."""
        opts = self.options
        rng = np.random.default_rng([opts.seed, index])
        logit = np.full(n, BIAS)
        columns: dict[str, pa.Array] = {}
        for j, name in enumerate(DENSE_COLUMNS):
            x = self.dense_mu[j] + self.dense_sigma[j] * rng.standard_normal(n)
            counts = np.floor(np.exp(x)).astype(np.int64)
            valid = rng.random(n) >= opts.missing_rate
            if j < len(DENSE_WEIGHTS):
                effect = (np.log1p(counts) - self.dense_mu[j]) / self.dense_sigma[j]
                logit += np.where(valid, DENSE_WEIGHTS[j] * effect, 0.0)
            columns[name] = _numeric(counts, pa.int64(), valid)
        ranks = []
        for c, name in enumerate(CATEGORICAL_COLUMNS):
            r = self.zipf[c].sample(rng.random(n))
            valid = rng.random(n) >= opts.missing_rate
            columns[name] = _hex_ids(r, _key(opts.model_seed, c, 1), self.zipf[c].n, valid)
            ranks.append(np.where(valid, r, 0))  # rank 0 = missing: no effect below
        logit += self._id_effects(ranks)
        p_true = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(n) < p_true).astype(np.int8)
        arrays = [_numeric(labels, pa.int8()), *(columns[c] for c in ARROW_SCHEMA.names[1:])]
        return pa.Table.from_arrays(
            [*arrays, _numeric(p_true, pa.float64())], schema=PARQUET_SCHEMA
        )

    def _id_effects(self, ranks: list[np.ndarray]) -> np.ndarray:
        seed = self.options.model_seed
        out = np.zeros(len(ranks[0]))
        for c in range(EFFECT_COLUMNS):
            out += np.where(
                ranks[c] > 0, EFFECT_SCALE * _hashed_normal(ranks[c], _key(seed, c, 2)), 0
            )
        a, b = PAIR_COLUMNS
        for t in range(PAIR_RANK):
            u = _hashed_normal(ranks[a], _key(seed, a, 3, t))
            v = _hashed_normal(ranks[b], _key(seed, b, 4, t))
            out += np.where((ranks[a] > 0) & (ranks[b] > 0), PAIR_SCALE**2 * u * v, 0)
        return out


def _rows(model: PlantedModel, rows: int) -> Iterator[pa.Table]:
    for index in range(-(-rows // BLOCK_ROWS)):
        # The last block draws only the rows it needs (small logs stay fast); so the rows of a
        # log are a function of (seed, rows, ...), and not a prefix of a longer log's rows.
        yield model.block(index, min(BLOCK_ROWS, rows - index * BLOCK_ROWS))


def file_names(options: SynthOptions) -> list[str]:
    suffix = ".parquet" if options.format is OutputFormat.parquet else ".tsv"
    suffix += ".gz" if options.gzip else ""
    return [os.path.join(options.out, f"part-{i:05d}{suffix}") for i in range(options.files)]


def write_synthetic(options: SynthOptions) -> SynthReport:
    """Write the synthetic log described by `options`; return its CTR and best AUC."""
    report = SynthReport(files=file_names(options))
    stream = RowStream(_rows(PlantedModel(options), options.rows))
    with tqdm(total=options.rows, unit="row", disable=not options.progress) as bar:
        for i, path in enumerate(report.files):
            rows = (i + 1) * options.rows // options.files - i * options.rows // options.files
            with atomic_path(path) as tmp:
                _write_file(stream, tmp, rows, options, report, bar)
            logger.info("wrote %s rows to %s", f"{rows:,}", path)
    report.finish()
    return report


def _write_file(
    stream: RowStream,
    tmp: os.PathLike[str],
    rows: int,
    options: SynthOptions,
    report: SynthReport,
    bar: tqdm,
) -> None:
    """Write the next `rows` rows of `stream` to one file (Parquet with p_true, or TSV)."""
    if options.format is OutputFormat.parquet:
        writer = pq.ParquetWriter(tmp, PARQUET_SCHEMA, compression="zstd")
        chunk = options.row_group_rows
    else:
        sink = (
            pa.CompressedOutputStream(str(tmp), "gzip")
            if options.gzip
            else pa.OSFile(str(tmp), "wb")
        )
        write = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
        writer = pacsv.CSVWriter(sink, ARROW_SCHEMA, write_options=write)
        chunk = BLOCK_ROWS
    with writer:
        while rows > 0:
            table = stream.take(min(chunk, rows))
            report.add(_to_numpy(table, LABEL, np.int8), _to_numpy(table, P_TRUE, np.float64))
            if options.format is OutputFormat.parquet:
                writer.write_table(table, row_group_size=table.num_rows)
            else:
                writer.write_table(table.drop_columns([P_TRUE]))
            rows -= table.num_rows
            bar.update(table.num_rows)
    if options.format is OutputFormat.tsv:
        sink.close()
