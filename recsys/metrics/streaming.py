"""Metrics over any number of rows and ranks in bounded memory: reduced sums, and AUC from a
histogram refined until its error bound is met. Nothing is gathered onto one rank.

Log loss, NE, calibration and CTR are ratios of four weighted sums (`BinarySums`): each rank
adds its rows, one all-reduce adds the ranks.

AUC from a histogram of scores. Counting a bin's (positive, negative) pairs as ties (1/2)
instead of comparing their scores is the only error, so with P and N the total positive and
negative weight,

    |AUC_histogram - AUC_exact| <= sum over bins b holding two distinct scores of
                                   pos_b * neg_b / (2 * P * N)

(pairs of equal scores count 1/2 in the exact AUC too). `histogram_auc` computes that bound
exactly, and refines the bins that contribute most (each split evenly between the smallest and
largest score it holds, which always splits its largest score off) and reads the rows again,
until the bound is at most `tolerance`, no bin is left to split, or a budget of bins or passes
is spent. Bins start on a grid of the scores' float values: 1024 per power of two on each
side of 0 (relative width 1e-3), so that one pass is often enough; scores squeezed into a
narrow range (where any fixed grid fails) take a pass or two more. Every rank holds the same
bins, so ranks agree on the result and only the bin counts are all-reduced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from recsys.distributed.gather import collective_device

DEFAULT_EPS = 1e-7
OCTAVES = 16  # grid magnitudes 2^-16 .. 2^16; beyond: one bin on each side (refined if needed)
PER_OCTAVE = 1024
MAX_BINS = 1 << 20
MAX_PASSES = 8
MAX_SPLIT = 4096  # sub-bins one bin becomes in a pass

# Rows of one chunk (float64): scores (probabilities, or logits: any order-keeping transform
# gives the same AUC), positive weight w * y and negative weight w * (1 - y).
Chunk = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _active(group: dist.ProcessGroup | None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _all_reduce(
    values: torch.Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None
) -> torch.Tensor:
    """`values` reduced over the group's ranks, on the CPU (on the backend's device meanwhile:
    NCCL reduces CUDA tensors only)."""
    if not _active(group):
        return values
    moved = values.to(collective_device(group))
    dist.all_reduce(moved, op=op, group=group)
    return moved.cpu()


# ---------------------------------------------------------------------------------- sums


class BinarySums:
    """Weighted sums of one set of rows, from which every metric but AUC follows exactly."""

    def __init__(self, eps: float = DEFAULT_EPS):
        self.eps = eps
        self.values = torch.zeros(4, dtype=torch.float64)  # w, w*y, w*p, w*cross-entropy

    def update(self, labels: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor) -> None:
        """Add rows (1-D float64 tensors, as `recsys.metrics.binary._prepare` makes them)."""
        p = probs.clamp(self.eps, 1.0 - self.eps)
        ce = -(labels * torch.log(p) + (1.0 - labels) * torch.log1p(-p))
        batch = torch.stack([weights, weights * labels, weights * probs, weights * ce]).sum(1)
        self.values += batch

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> BinarySums:
        """The sums over every rank (a collective under a process group of several)."""
        self.values = _all_reduce(self.values, dist.ReduceOp.SUM, group)
        return self

    def metrics(self) -> dict[str, float]:
        """log_loss, ne, calibration, ctr and num_examples, as `recsys.metrics.binary` defines
        them (NaN where a denominator is 0)."""
        total, clicks, predicted, ce = (float(v) for v in self.values)
        ctr = clicks / total if total else math.nan
        rate = min(max(ctr, self.eps), 1.0 - self.eps) if total else math.nan
        entropy = -(rate * math.log(rate) + (1.0 - rate) * math.log1p(-rate)) if total else 0.0
        return {
            "log_loss": ce / total if total else math.nan,
            "ne": ce / (total * entropy) if total else math.nan,
            "calibration": predicted / clicks if clicks else math.nan,
            "ctr": ctr,
            "num_examples": total,
        }


# ----------------------------------------------------------------------------------- AUC


@dataclass(frozen=True)
class AucResult:
    """An AUC and how far from the exact one it may be: |auc - exact| <= error_bound."""

    auc: float
    error_bound: float
    bins: int
    passes: int


def initial_edges() -> torch.Tensor:
    """Bin edges (float64, ascending) on the scores' float scale: 1024 per power of two in
    magnitude on each side of 0, with -inf and +inf isolated in bins of their own."""
    magnitudes = (
        2.0 ** torch.arange(-OCTAVES, OCTAVES, dtype=torch.float64)[:, None]
        * (1 + torch.arange(PER_OCTAVE, dtype=torch.float64) / PER_OCTAVE)
    ).reshape(-1)
    biggest = torch.finfo(torch.float64).max
    inf = torch.tensor([math.inf], dtype=torch.float64)
    return torch.cat(
        [torch.tensor([-biggest]), -magnitudes.flip(0), torch.zeros(1), magnitudes, inf]
    )


class ScoreHistogram:
    """Positive and negative weight, smallest and largest score, per bin of `edges`.
    Bin i holds scores s with edges[i - 1] <= s < edges[i] (bin 0: below edges[0])."""

    def __init__(self, edges: torch.Tensor):
        self.edges = edges
        n = len(edges) + 1
        self.pos = torch.zeros(n, dtype=torch.float64)
        self.neg = torch.zeros(n, dtype=torch.float64)
        self.low = torch.full((n,), math.inf, dtype=torch.float64)
        self.high = torch.full((n,), -math.inf, dtype=torch.float64)

    def update(self, scores: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> None:
        bins = torch.bucketize(scores, self.edges, right=True)
        self.pos.index_add_(0, bins, pos)
        self.neg.index_add_(0, bins, neg)
        self.low.scatter_reduce_(0, bins, scores, "amin")
        self.high.scatter_reduce_(0, bins, scores, "amax")

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> ScoreHistogram:
        """Every rank's rows in one histogram (a collective under a process group of several)."""
        sums = _all_reduce(torch.stack([self.pos, self.neg]), dist.ReduceOp.SUM, group)
        self.pos, self.neg = sums[0], sums[1]
        self.low = _all_reduce(self.low, dist.ReduceOp.MIN, group)
        self.high = _all_reduce(self.high, dist.ReduceOp.MAX, group)
        return self

    def mixed(self) -> torch.Tensor:
        """pos * neg of bins holding two distinct scores: what each may add to the error."""
        return torch.where(self.low < self.high, self.pos * self.neg, 0.0)

    def auc(self) -> tuple[float, float]:
        """(AUC with pairs inside a bin counted 1/2, its error bound); NaN with one class."""
        total_pos, total_neg = float(self.pos.sum()), float(self.neg.sum())
        if total_pos <= 0 or total_neg <= 0:
            return math.nan, 0.0
        neg_below = torch.cumsum(self.neg, 0) - self.neg
        area = float((self.pos * (neg_below + 0.5 * self.neg)).sum())
        bound = float(self.mixed().sum()) / (2 * total_pos * total_neg)
        return area / (total_pos * total_neg), bound

    def refined_edges(self, tolerance: float, max_bins: int) -> torch.Tensor | None:
        """Edges that split the bins contributing most to the error bound, or None when the
        bound is met already, no bin can be split, or the bin budget is spent."""
        mixed = self.mixed()
        total_pos, total_neg = float(self.pos.sum()), float(self.neg.sum())
        allowed = 2 * tolerance * total_pos * total_neg  # the bound's numerator may reach this
        budget = max_bins - len(self.edges)
        if float(mixed.sum()) <= allowed or budget < 2:
            return None
        contribution, order = torch.sort(mixed, descending=True)
        left = float(mixed.sum()) - torch.cumsum(contribution, 0)
        # Split the fewest bins that leave half the allowed error in the bins not split.
        count = int((left > allowed / 2).sum()) + 1
        count = min(count, int((contribution > 0).sum()), budget // 2)
        chosen = order[:count]
        # As many parts as bring the largest contribution to its share, were its rows spread
        # evenly (they need not be: another pass splits again), within the budget.
        parts = min(MAX_SPLIT, budget // count)
        if allowed > 0:
            parts = min(parts, math.ceil(2 * count * float(contribution[0]) / allowed))
        parts = max(2, parts)
        fractions = torch.arange(1, parts, dtype=torch.float64) / parts
        low, high = self.low[chosen, None], self.high[chosen, None]
        inner = (low + (high - low) * fractions).reshape(-1)
        new = torch.cat([self.edges, inner, self.high[chosen]])
        return torch.unique(new[torch.isfinite(new) | (new == math.inf)])


def histogram_auc(
    chunks: Callable[[], Iterable[Chunk]],
    tolerance: float = 1e-4,
    first: ScoreHistogram | None = None,
    group: dist.ProcessGroup | None = None,
    max_bins: int = MAX_BINS,
    max_passes: int = MAX_PASSES,
) -> AucResult:
    """AUC over every rank's rows with |auc - exact| <= the returned error_bound, which is at
    most `tolerance` unless the budget of bins or passes ran out first (a collective).

    Args:
        chunks: reads this rank's rows again from the start, a chunk at a time.
        tolerance: the error bound to reach (0: exact, as far as the budget goes).
        first: a histogram of this rank's rows over `initial_edges()`, made while the rows
            went by (saves the first read); None: made here.
    """
    histogram = first if first is not None else _read(initial_edges(), chunks)
    histogram.all_reduce(group)
    passes = 1
    while passes < max_passes:
        edges = histogram.refined_edges(tolerance, max_bins)
        if edges is None:
            break
        histogram = _read(edges, chunks).all_reduce(group)
        passes += 1
    auc, bound = histogram.auc()
    return AucResult(auc, bound, len(histogram.edges) + 1, passes)


def _read(edges: torch.Tensor, chunks: Callable[[], Iterable[Chunk]]) -> ScoreHistogram:
    histogram = ScoreHistogram(edges)
    for scores, pos, neg in chunks():
        histogram.update(scores, pos, neg)
    return histogram


__all__ = [
    "AucResult",
    "BinarySums",
    "ScoreHistogram",
    "histogram_auc",
    "initial_edges",
]
