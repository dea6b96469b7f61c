"""Evaluation metrics, computed exactly over all ranks of a distributed job."""

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
