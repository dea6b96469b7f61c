"""Evaluation passes: metrics over every row of every rank in bounded memory, and predictions.

Nothing is gathered onto one rank. Each rank adds its rows to the metrics' sums and to a
histogram of logits, and writes its predictions to its own file
(`recsys.metrics.predictions`); the sums are all-reduced, and AUC comes from the histogram,
refined by reading those files again until its error bound is at most `AUC_TOLERANCE`
(`recsys.metrics.streaming`). Memory does not grow with the evaluation set: a row group of
predictions, the histogram's bins and a fixed-size sample of rows for figures.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.data.batch import Batch
from recsys.data.loader import StreamingDataset, make_loader
from recsys.distributed.env import DistEnv, lockstep
from recsys.metrics import BinaryMetrics
from recsys.metrics.predictions import (
    PredictionSample,
    PredictionSpill,
    part_name,
    parts_dir,
    publish,
)
from recsys.metrics.streaming import BinarySums, ScoreHistogram, histogram_auc, initial_edges
from recsys.schema import Schema

log = logging.getLogger(__name__)

# |reported AUC - exact AUC| <= this, unless the histogram's budget of bins and passes ran out
# first (then the bound reached is reported, and a warning if it is above 1e-4).
AUC_TOLERANCE = 1e-6
AUC_PROMISE = 1e-4


@dataclass
class Evaluation:
    metrics: BinaryMetrics
    auc_error_bound: float  # |metrics.auc - exact AUC| <= this (0: exact)
    row_ids: np.ndarray  # a sample of the eval rows (all of them, up to SAMPLE_ROWS) ...
    probs: np.ndarray  # ... its predicted click probabilities ...
    labels: np.ndarray  # ... and labels (float32), sorted by row id, the same on every rank
    predictions: Path | None = None  # every row's (row_id, prob), when asked for


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: StreamingDataset,
    schema: Schema,
    env: DistEnv,
    predictions_to: Path | None = None,
) -> Evaluation:
    """Metrics over every row of `dataset` on every rank (a collective), and with
    `predictions_to` (the same path on every rank), a Parquet file of every row's (row_id,
    prob) sorted by row id (each rank writes its own part; rank 0 merges them, streaming).

    `model` is the train wrapper (batch -> (loss, (loss, logits, labels))); it is left in
    train mode again afterwards.
    """
    with ExitStack() as stack:
        if predictions_to is None:  # a rank's own file, only for the metrics to read again
            spill_to = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "spill.parquet"
        else:
            spill_to = parts_dir(Path(predictions_to)) / part_name(env.rank)
        spill, state = PredictionSpill(spill_to), _State()
        try:
            _score(model, dataset, schema, env, spill, state)
        finally:
            spill.close()
        auc = histogram_auc(spill.chunks, AUC_TOLERANCE, first=state.histogram)
        if auc.error_bound > AUC_PROMISE and env.is_main:
            log.warning("AUC %.6f is within %.2g of exact only", auc.auc, auc.error_bound)
        metrics = BinaryMetrics(auc=auc.auc, **state.sums.all_reduce().metrics())
        row_ids, probs, labels = state.sample.gather()
    if predictions_to is not None and env.is_main:  # every part is closed: AUC read them all
        publish(Path(predictions_to), env.world_size)
    return Evaluation(metrics, auc.error_bound, row_ids, probs, labels, predictions_to)


class _State:
    """What one rank keeps of its rows: sums, a histogram of logits, a sample."""

    def __init__(self) -> None:
        self.sums = BinarySums()
        self.histogram = ScoreHistogram(initial_edges())
        self.sample = PredictionSample()


def _score(
    model: nn.Module,
    dataset: StreamingDataset,
    schema: Schema,
    env: DistEnv,
    spill: PredictionSpill,
    state: _State,
) -> None:
    model.eval()
    padding = Batch.padding(schema, dataset.options.batch_size)
    loader = lockstep(make_loader(dataset), padding, env)
    try:
        for batch in loader:
            batch = batch.to(env.device, non_blocking=True)
            _, (_, logits, labels) = model(batch)
            real = batch.real_rows.cpu()
            logits, labels = logits.float().cpu()[real], labels.float().cpu()[real]
            _add(state, spill, batch.row_ids.cpu()[real], logits, labels, batch.weights.cpu()[real])
    finally:
        loader.close()  # stops the loader's read-ahead now, also when a batch failed
        model.train()


def _add(
    state: _State,
    spill: PredictionSpill,
    row_ids: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
) -> None:
    probs = torch.sigmoid(logits)
    y, w = labels.double(), weights.double()
    state.sums.update(y, probs.double(), w)
    state.histogram.update(logits.double(), w * y, w * (1.0 - y))
    state.sample.add(row_ids, probs, labels)
    spill.append(
        {
            "row_id": row_ids.numpy(),
            "prob": probs.numpy(),
            "logit": logits.numpy(),
            "label": labels.numpy(),
            "weight": weights.float().numpy(),
        }
    )


__all__ = ["Evaluation", "evaluate"]
