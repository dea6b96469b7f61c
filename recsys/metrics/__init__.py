"""Evaluation metrics over all ranks of a distributed job: exact, or (AUC over more rows than
are worth gathering) within a stated bound, in bounded memory (recsys.metrics.streaming)."""

from recsys.metrics.binary import (
    BinaryMetrics,
    MetricAccumulator,
    auc,
    calibration,
    compute_binary_metrics,
    ctr,
    log_loss,
    normalized_entropy,
)

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
