"""Exact evaluation metrics for a binary (click) model.

Every metric is computed over the full evaluation set, never averaged per batch or per rank:
the pure functions work on 1-D tensors, and :class:`MetricAccumulator` collects batches and,
under ``torch.distributed``, computes over every rank's rows: a few (``GATHER_ROWS``) are
gathered, more never leave their rank (sums are all-reduced, and AUC comes from a histogram
refined until it is within a stated bound: ``recsys.metrics.streaming``). For evaluation sets
of any size, ``recsys.train.evaluator`` keeps no rows in memory at all.

All arithmetic is done in float64. Sample weights are supported everywhere; rows with weight
0 (e.g. padding) are dropped and so affect no metric. Labels may be soft (in ``[0, 1]``): a row
counts as ``w * y`` positive and ``w * (1 - y)`` negative weight.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from recsys.distributed.gather import all_gather_rows, collective_device
from recsys.metrics.streaming import BinarySums, histogram_auc

__all__ = [
    "BinaryMetrics",
    "MetricAccumulator",
    "auc",
    "calibration",
    "compute_binary_metrics",
    "ctr",
    "log_loss",
    "normalized_entropy",
]

DEFAULT_EPS = 1e-7
# Up to this many rows over all ranks, the accumulator gathers them (exact, and fewer bytes
# than one pass of the AUC histogram); beyond, nothing is gathered.
GATHER_ROWS = 1 << 16
_NAN = float("nan")


def _prepare(
    labels: torch.Tensor, values: torch.Tensor | None, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten to float64 CPU tensors, default the weights to 1 and drop zero-weight rows.

    Args:
        labels: Labels in ``[0, 1]``, any shape with ``n`` elements.
        values: Scores or probabilities with ``n`` elements, or ``None`` (returned as zeros).
        weights: Non-negative sample weights with ``n`` elements, or ``None`` for all ones.

    Returns:
        ``(labels, values, weights)`` as 1-D float64 tensors restricted to rows with weight != 0.

    Raises:
        ValueError: If the inputs do not have the same number of elements.
    """
    y = labels.detach().reshape(-1).to("cpu", torch.float64)
    v = (
        torch.zeros_like(y)
        if values is None
        else values.detach().reshape(-1).to("cpu", torch.float64)
    )
    w = (
        torch.ones_like(y)
        if weights is None
        else weights.detach().reshape(-1).to("cpu", torch.float64)
    )
    if not y.numel() == v.numel() == w.numel():
        raise ValueError(
            f"length mismatch: labels={y.numel()}, values={v.numel()}, weights={w.numel()}"
        )
    keep = w != 0
    if bool(keep.all()):
        return y, v, w
    return y[keep], v[keep], w[keep]


def _safe_div(num: float, den: float) -> float:
    """Return ``num / den``, or NaN when ``den`` is 0."""
    return num / den if den != 0 else _NAN


def auc(labels: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Exact (weighted) area under the ROC curve in O(n log n).

    Equals the probability that a random positive scores above a random negative, pairs weighted
    by ``w_i * w_j``, with tied scores counted as 1/2 (the trapezoid / midrank rule).

    Args:
        labels: Labels in ``[0, 1]``.
        scores: Model scores (any monotone transform of the probability gives the same AUC).
        weights: Optional non-negative sample weights.

    Returns:
        The AUC, or NaN when the positive or the negative weight is zero (one class only).
    """
    y, s, w = _prepare(labels, scores, weights)
    pos_w, neg_w = w * y, w * (1.0 - y)
    total_pos, total_neg = float(pos_w.sum()), float(neg_w.sum())
    if total_pos <= 0 or total_neg <= 0:
        return _NAN
    sorted_scores, order = torch.sort(s)
    _, group = torch.unique_consecutive(sorted_scores, return_inverse=True)
    num_groups = int(group[-1]) + 1
    group_pos = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, pos_w[order])
    group_neg = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, neg_w[order])
    neg_below = torch.cumsum(group_neg, 0) - group_neg
    area = float((group_pos * (neg_below + 0.5 * group_neg)).sum())
    return area / (total_pos * total_neg)


def _cross_entropy_sum(y: torch.Tensor, p: torch.Tensor, w: torch.Tensor, eps: float) -> float:
    """Weighted sum of the per-row binary cross-entropy (natural log), probs clamped by ``eps``."""
    p = p.clamp(eps, 1.0 - eps)
    return float(-(w * (y * torch.log(p) + (1.0 - y) * torch.log1p(-p))).sum())


def log_loss(
    labels: torch.Tensor,
    probs: torch.Tensor,
    weights: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
) -> float:
    """Weighted mean binary cross-entropy (natural log).

    Args:
        labels: Labels in ``[0, 1]``.
        probs: Predicted click probabilities; clamped to ``[eps, 1 - eps]``.
        weights: Optional non-negative sample weights.
        eps: Clamp applied to ``probs`` so the loss stays finite.

    Returns:
        ``sum(w * ce) / sum(w)``, or NaN when the total weight is zero.
    """
    y, p, w = _prepare(labels, probs, weights)
    return _safe_div(_cross_entropy_sum(y, p, w, eps), float(w.sum()))


def _binary_entropy(rate: float, eps: float) -> float:
    """Entropy (natural log) of a Bernoulli(``rate``), ``rate`` clamped to ``[eps, 1 - eps]``."""
    rate = min(max(rate, eps), 1.0 - eps)
    return -(rate * math.log(rate) + (1.0 - rate) * math.log1p(-rate))


def normalized_entropy(
    labels: torch.Tensor,
    probs: torch.Tensor,
    weights: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
) -> float:
    """Normalized entropy (He et al. 2014): log loss over the entropy of the weighted base rate.

    1.0 means no better than always predicting the base rate; lower is better. As in TorchRec the
    base rate is clamped to ``[eps, 1 - eps]``, so a single-class set gives a large finite value.

    Args:
        labels: Labels in ``[0, 1]``.
        probs: Predicted click probabilities; clamped to ``[eps, 1 - eps]``.
        weights: Optional non-negative sample weights.
        eps: Clamp for the probabilities and the base rate.

    Returns:
        The NE, or NaN when the total weight is zero.
    """
    y, p, w = _prepare(labels, probs, weights)
    total = float(w.sum())
    if total == 0:
        return _NAN
    base_rate = float((w * y).sum()) / total
    return _cross_entropy_sum(y, p, w, eps) / (total * _binary_entropy(base_rate, eps))


def calibration(
    labels: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor | None = None
) -> float:
    """Ratio of predicted to observed clicks: ``sum(w * p) / sum(w * y)`` (1.0 is calibrated).

    Args:
        labels: Labels in ``[0, 1]``.
        probs: Predicted click probabilities.
        weights: Optional non-negative sample weights.

    Returns:
        The calibration ratio, or NaN when there are no (weighted) positive labels.
    """
    y, p, w = _prepare(labels, probs, weights)
    return _safe_div(float((w * p).sum()), float((w * y).sum()))


def ctr(labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Weighted click-through rate ``sum(w * y) / sum(w)``.

    Args:
        labels: Labels in ``[0, 1]``.
        weights: Optional non-negative sample weights.

    Returns:
        The CTR, or NaN when the total weight is zero.
    """
    y, _, w = _prepare(labels, None, weights)
    return _safe_div(float((w * y).sum()), float(w.sum()))


@dataclass
class BinaryMetrics:
    """Evaluation results for a binary model over one full evaluation set.

    Attributes:
        auc: ROC AUC (NaN with a single class).
        log_loss: Weighted mean cross-entropy (natural log).
        ne: Normalized entropy.
        calibration: Predicted over observed clicks.
        ctr: Weighted observed click rate.
        num_examples: Total sample weight (the row count when unweighted).
    """

    auc: float
    log_loss: float
    ne: float
    calibration: float
    ctr: float
    num_examples: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Return the metrics as ``{prefix + name: value}``, e.g. for MLflow logging.

        Args:
            prefix: Prepended verbatim to every key (e.g. ``"eval/"``).

        Returns:
            A flat name-to-float mapping.
        """
        return {f"{prefix}{name}": float(value) for name, value in asdict(self).items()}


def compute_binary_metrics(
    labels: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor | None = None
) -> BinaryMetrics:
    """Compute every binary metric on one (local) set of rows.

    Args:
        labels: Labels in ``[0, 1]``.
        probs: Predicted click probabilities.
        weights: Optional non-negative sample weights.

    Returns:
        A :class:`BinaryMetrics`.
    """
    y, p, w = _prepare(labels, probs, weights)
    return BinaryMetrics(
        auc=auc(y, p, w),
        log_loss=log_loss(y, p, w),
        ne=normalized_entropy(y, p, w),
        calibration=calibration(y, p, w),
        ctr=ctr(y, w),
        num_examples=float(w.sum()),
    )


class MetricAccumulator:
    """Collects per-batch predictions and computes exact metrics over all ranks.

    Example:
        >>> acc = MetricAccumulator()
        >>> for batch in loader:
        ...     acc.update(batch.labels, torch.sigmoid(model(batch)))
        >>> metrics = acc.compute()  # collective: call on every rank
    """

    def __init__(self, auc_tolerance: float = 1e-6) -> None:
        """Create an empty accumulator.

        Args:
            auc_tolerance: Over more than ``GATHER_ROWS`` rows of several ranks, the AUC is
                within this of the exact one (0: exact, as far as the histogram's bins allow).
        """
        self.auc_tolerance = auc_tolerance
        self.auc_error_bound = 0.0  # of the last compute()
        self._labels: list[torch.Tensor] = []
        self._probs: list[torch.Tensor] = []
        self._weights: list[torch.Tensor] = []

    def update(
        self, labels: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor | None = None
    ) -> None:
        """Append one batch (detached, flattened, copied to CPU as float64).

        Args:
            labels: Labels in ``[0, 1]``.
            probs: Predicted click probabilities.
            weights: Optional non-negative sample weights (``None`` means all ones).

        Raises:
            ValueError: If the inputs do not have the same number of elements.
        """
        y, p, w = _prepare(labels, probs, weights)
        self._labels.append(y)
        self._probs.append(p)
        self._weights.append(w)

    def reset(self) -> None:
        """Drop every accumulated batch."""
        self._labels.clear()
        self._probs.clear()
        self._weights.clear()

    def _local_rows(self) -> torch.Tensor:
        """Accumulated rows as a ``[3, n]`` float64 tensor: labels, probs, weights."""
        if not self._labels:
            return torch.zeros(3, 0, dtype=torch.float64)
        return torch.stack(
            [torch.cat(self._labels), torch.cat(self._probs), torch.cat(self._weights)]
        )

    def compute(self, group: dist.ProcessGroup | None = None) -> BinaryMetrics:
        """Compute metrics over the union of every rank's rows.

        Under an initialized ``torch.distributed`` this is a collective: every rank of ``group``
        must call it, and every rank gets the same result. Up to ``GATHER_ROWS`` rows in all,
        they are gathered and the metrics are exact. Beyond, rows never leave their rank: the
        sums behind log loss, NE, calibration and CTR are all-reduced, and AUC comes from a
        histogram of scores (``auc_error_bound`` says how exact it is). Without a process group
        of several it is purely local and exact.

        Args:
            group: Process group to reduce over, or ``None`` for the default group.

        Returns:
            The metrics on all accumulated rows (of all ranks).
        """
        rows = self._local_rows()
        self.auc_error_bound = 0.0
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return compute_binary_metrics(rows[0], rows[1], rows[2])
        total = torch.tensor([float(rows.shape[1])], device=collective_device(group))
        dist.all_reduce(total, group=group)
        if total.item() <= GATHER_ROWS:
            rows = all_gather_rows(rows, group)
            return compute_binary_metrics(rows[0], rows[1], rows[2])
        y, p, w = rows
        sums = BinarySums()
        sums.update(y, p, w)
        result = histogram_auc(lambda: [(p, w * y, w * (1.0 - y))], self.auc_tolerance, group=group)
        self.auc_error_bound = result.error_bound
        return BinaryMetrics(auc=result.auc, **sums.all_reduce(group).metrics())
