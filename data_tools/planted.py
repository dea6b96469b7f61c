"""The planted model behind `recsys-data synth`: worlds, Zipf ids, per-id effects by hashing.

`PlantedModel.block(i)` draws block i of a log: ids, dense counts, and each row's click
probability `p_true` and label, from a generator seeded by (seed, i), so the rows depend only on
what defines the data, never on how it is laid out in files (data_tools.synth).

Ids: column c has `distinct[c]` possible ids; rank k in [1, n] is drawn from a bounded Zipf
law P(k) ~ k^-s by inverse CDF (exact for the first `HEAD_RANKS` ranks, the midpoint
integral of x^-s beyond, whose relative error there is below 1e-8), so n can be 10^9+.
Rank k becomes an id through a bijective integer mixer, and every per-id weight of the
planted model is a hash of (model_seed, column, rank): nothing is stored per id.

Worlds (`World`, `WORLDS`): what the label depends on. In every world logit = bias + the
effects below, label ~ Bernoulli(sigmoid(logit)), and a missing value contributes nothing;
dense counts are drawn alike in all worlds (dense effect: a weight times the standardized
log1p of the count), so only labels and the ids' statistics differ. Scales give a CTR of
0.25-0.3 and a best AUC near 0.8 on every world (measured: the comment above `WORLDS`).
* mixed (the default; the original model, byte for byte): per-id effects of C1..C8
  (N(0, 0.4^2) each), a rank-4 interaction C9 x C10 (dot product of hashed per-id factors,
  each N(0, 0.6^2)), dense I1..I4. 10^6 ids per column, Zipf 1.05.
* first_order: per-id effects of C1..C10 (N(0, 0.42^2)) and dense I1..I4, nothing else: a
  logistic regression on one-hot ids and log counts is the true model's family, so it can reach
  the best AUC given enough rows per id. 10^4 ids per column, Zipf 1.05.
* pairwise: weak per-id effects of C1..C8 (N(0, 0.25^2)) and rank-4 interactions of five
  pairs C1xC2, C3xC4, C5xC6, C7xC8, C1xC5 (factors N(0, 0.5^2)), dense I1..I4. Most of the
  signal is in the pairs: a model without interactions stays far below p_true, one with
  dot products of embeddings (FM, DLRM, DCN) can approach it. 10^4 ids per column, Zipf 1.05.
* cold_start: 10^7 ids per column with a flat Zipf (0.5), so nearly every id of an eval split
  was never seen in training. C9..C16 hold the category of the C1..C8 id (rank //
  CATEGORY_RANKS, hashed like any id): 100 frequent values. Effects: per category
  N(0, 0.46^2) and dense I1..I6; an id of C1..C8 carries nothing beyond its category, as a
  new item is known by its attributes. A model that learns the category and dense columns
  and is not thrown by the ids it never saw (hashed into buckets that training rows of other
  ids moved) can approach p_true; one that leans on the ids cannot. (An effect of each id of its
  own would put p_true out of any model's reach: an unseen id's effect cannot be learned.
  The first version of this world had one, N(0, 0.3^2), over 10^4 categories: a model told
  the structure reached 0.55 of p_true's lift, so the world measured itself, not the model.)
Columns a world does not name carry no signal (noise a model must learn to ignore).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pyarrow as pa

from data_tools.criteo import ARROW_SCHEMA, CATEGORICAL_COLUMNS, DENSE_COLUMNS

BLOCK_ROWS = 1 << 16
"""Rows drawn per seeded block; part of the output's definition (changing it changes bytes)."""

HEAD_RANKS = 10_000
"""Ranks whose Zipf weights are summed exactly; the tail uses the integral of x^-s."""

P_TRUE = "p_true"
PARQUET_SCHEMA = ARROW_SCHEMA.append(pa.field(P_TRUE, pa.float64()))
"""The Criteo columns plus `p_true`: what a block holds and what Parquet output stores."""

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_M32 = np.uint64(0xFFFFFFFF)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

CATEGORY_RANKS = 100_000
"""Consecutive ranks of a parent id that share one category (world cold_start: 100 per column of
10^7 ids, each drawn at least ~0.5% of the time, so every category is learnable from 200k rows)."""


class World(StrEnum):
    """Which planted model the rows come from (see the module docstring)."""

    mixed = "mixed"  # the original model, the default: first-order effects and one pair
    first_order = "first_order"
    pairwise = "pairwise"
    cold_start = "cold_start"


@dataclass(frozen=True)
class WorldSpec:
    """One world's planted model and its id statistics. Column numbers count from 0 (C1).

    Attributes:
        bias: the logit's constant; sets the CTR.
        effects: per-id effect scale of C1, C2, ... (columns beyond the tuple: none).
        pairs: column pairs (a, b) whose ids interact through a dot product of factors.
        pair_rank: factors per id in each pair.
        factor_scale: standard deviation of each factor.
        categories: (column, parent): the column holds the category of the parent's id,
            rank // CATEGORY_RANKS, so rare ids share a frequent value.
        dense_weights: weight of standardized log1p(I1), log1p(I2), ...
        distinct: distinct ids per column when SynthOptions.distinct is not given.
        zipf: Zipf exponent when SynthOptions.zipf is not given.
    """

    bias: float
    effects: tuple[float, ...]
    pairs: tuple[tuple[int, int], ...] = ()
    pair_rank: int = 4
    factor_scale: float = 0.0
    categories: tuple[tuple[int, int], ...] = ()
    dense_weights: tuple[float, ...] = (0.35, -0.25, 0.3, 0.2)
    distinct: int = 1_000_000
    zipf: float = 1.05


# Scales chosen for a Criteo-like CTR (0.15-0.35) and a best achievable AUC near 0.8. Measured
# on 1e5 rows (seed 1, model seed 0), AUC(label, p_true) and, in brackets, the AUC left
# without the structure a simpler model misses (the pairs):
#   mixed 0.798 (0.756), first_order 0.794, pairwise 0.800 (0.667), cold_start 0.809;
#   CTR 0.249, 0.254, 0.285, 0.291.
WORLDS: dict[World, WorldSpec] = {
    World.mixed: WorldSpec(bias=-1.5, effects=(0.4,) * 8, pairs=((8, 9),), factor_scale=0.6),
    World.first_order: WorldSpec(bias=-1.4, effects=(0.42,) * 10, distinct=10_000),
    World.pairwise: WorldSpec(
        bias=-1.3,
        effects=(0.25,) * 8,
        pairs=((0, 1), (2, 3), (4, 5), (6, 7), (0, 4)),
        factor_scale=0.5,
        distinct=10_000,
    ),
    World.cold_start: WorldSpec(
        bias=-1.5,
        effects=(0.0,) * 8 + (0.46,) * 8,
        categories=tuple((8 + c, c) for c in range(8)),  # C9..C16: categories of C1..C8
        dense_weights=(0.35, -0.25, 0.3, 0.2, 0.3, -0.3),
        distinct=10_000_000,
        zipf=0.5,
    ),
}


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


@dataclass(frozen=True)
class Draw:
    """What a log's rows are drawn with (data_tools.synth.SynthOptions says what each means).

    Attributes:
        spec: the world.
        seed: draws the rows.
        model_seed: fixes the world's ids, per-id effects and dense distributions.
        distinct: distinct ids of C1, C2, ... (all 26 columns).
        zipf: Zipf exponent of every column's ranks.
        missing_rate: chance that a value (any column but the label) is missing.
    """

    spec: WorldSpec
    seed: int
    model_seed: int
    distinct: tuple[int, ...]
    zipf: float
    missing_rate: float


class PlantedModel:
    """Draws blocks of rows; per-id weights are hashes, so nothing grows with the id count."""

    def __init__(self, draw: Draw):
        self.draw, self.spec = draw, draw.spec
        self.zipf = [BoundedZipf(n, draw.zipf) for n in draw.distinct]
        self.parents = dict(self.spec.categories)
        params = np.random.default_rng([draw.model_seed, 0xC0FFEE])  # a few numbers
        self.dense_mu = params.uniform(0.0, 3.0, len(DENSE_COLUMNS))
        self.dense_sigma = params.uniform(0.5, 1.5, len(DENSE_COLUMNS))

    def block(self, index: int, n: int = BLOCK_ROWS) -> pa.Table:
        """Block `index`: rows from index * BLOCK_ROWS on; `n` < BLOCK_ROWS for the last one."""
        rng = np.random.default_rng([self.draw.seed, index])
        logit = np.full(n, self.spec.bias)
        columns: dict[str, pa.Array] = {}
        self._dense(rng, columns, logit)  # adds in place: the order of the sums is part of p_true
        logit += self._id_effects(self._ids(rng, n, columns))
        p_true = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(n) < p_true).astype(np.int8)
        arrays = [_numeric(labels, pa.int8()), *(columns[c] for c in ARROW_SCHEMA.names[1:])]
        return pa.Table.from_arrays(
            [*arrays, _numeric(p_true, pa.float64())], schema=PARQUET_SCHEMA
        )

    def _dense(
        self, rng: np.random.Generator, columns: dict[str, pa.Array], logit: np.ndarray
    ) -> None:
        """Draw I1..I13 into `columns` and add their effects to `logit`."""
        weights, missing_rate, n = self.spec.dense_weights, self.draw.missing_rate, len(logit)
        for j, name in enumerate(DENSE_COLUMNS):
            x = self.dense_mu[j] + self.dense_sigma[j] * rng.standard_normal(n)
            counts = np.floor(np.exp(x)).astype(np.int64)
            valid = rng.random(n) >= missing_rate
            if j < len(weights):
                effect = (np.log1p(counts) - self.dense_mu[j]) / self.dense_sigma[j]
                logit += np.where(valid, weights[j] * effect, 0.0)
            columns[name] = _numeric(counts, pa.int64(), valid)

    def _ids(
        self, rng: np.random.Generator, n: int, columns: dict[str, pa.Array]
    ) -> list[np.ndarray]:
        """Draw C1..C26 into `columns`; return each column's ranks, 0 where missing."""
        model_seed, missing_rate = self.draw.model_seed, self.draw.missing_rate
        drawn, ranks = [], []
        for c, name in enumerate(CATEGORICAL_COLUMNS):
            r = self.zipf[c].sample(rng.random(n))
            if c in self.parents:  # a category, set by the parent's rank (present or missing);
                # its own draw above still happens so every world reads the random stream alike
                r = (drawn[self.parents[c]] - 1) // CATEGORY_RANKS + 1
            valid = rng.random(n) >= missing_rate
            columns[name] = _hex_ids(r, _key(model_seed, c, 1), self.zipf[c].n, valid)
            drawn.append(r)
            ranks.append(np.where(valid, r, 0))  # rank 0 = missing: no effect below
        return ranks

    def _id_effects(self, ranks: list[np.ndarray]) -> np.ndarray:
        seed, spec = self.draw.model_seed, self.spec
        out = np.zeros(len(ranks[0]))
        for c, scale in enumerate(spec.effects):
            if scale == 0.0:  # the column's ids carry nothing of their own (cold_start's C1..C8)
                continue
            out += np.where(ranks[c] > 0, scale * _hashed_normal(ranks[c], _key(seed, c, 2)), 0)
        for a, b in spec.pairs:
            both = (ranks[a] > 0) & (ranks[b] > 0)
            for t in range(spec.pair_rank):
                u = _hashed_normal(ranks[a], _key(seed, a, 3, t))
                v = _hashed_normal(ranks[b], _key(seed, b, 4, t))
                out += np.where(both, spec.factor_scale**2 * u * v, 0)
        return out
