"""Evaluation passes: exact metrics over every row of every rank, and the predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recsys.data.batch import Batch
from recsys.data.loader import StreamingDataset, make_loader
from recsys.distributed.env import DistEnv, lockstep
from recsys.distributed.gather import all_gather_rows
from recsys.metrics import BinaryMetrics, MetricAccumulator
from recsys.schema import Schema


@dataclass
class Evaluation:
    metrics: BinaryMetrics
    row_ids: np.ndarray  # every eval row's id (of all ranks) ...
    probs: np.ndarray  # ... its predicted click probability ...
    labels: np.ndarray  # ... and its label (float32), all sorted by row id


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: StreamingDataset, schema: Schema, env: DistEnv
) -> Evaluation:
    """Exact metrics and predictions over every row of `dataset` on every rank (a collective).

    `model` is the train wrapper (batch -> (loss, (loss, logits, labels))); it is left in
    train mode again afterwards.
    """
    model.eval()
    accumulator = MetricAccumulator()
    row_ids, probs, targets = [], [], []
    padding = Batch.padding(schema, dataset.options.batch_size)
    loader = lockstep(make_loader(dataset), padding, env)
    try:
        for batch in loader:
            batch = batch.to(env.device, non_blocking=True)
            _, (_, logits, labels) = model(batch)
            p = torch.sigmoid(logits.float()).cpu()
            accumulator.update(labels.cpu(), p, batch.weights.cpu())
            real = batch.real_rows.cpu()
            row_ids.append(batch.row_ids.cpu()[real])
            probs.append(p[real])
            targets.append(labels.float().cpu()[real])
    finally:
        loader.close()  # stops the loader's read-ahead now, also when a batch failed
        model.train()
    metrics = accumulator.compute()
    return Evaluation(metrics, *_all_predictions(row_ids, probs, targets))


def _all_predictions(
    row_ids: list[torch.Tensor], probs: list[torch.Tensor], labels: list[torch.Tensor]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every rank's (row id, probability, label) rows, sorted by row id, on every rank."""
    ids = torch.cat(row_ids) if row_ids else torch.zeros(0, dtype=torch.int64)
    values = torch.zeros(2, 0)
    if probs:
        values = torch.stack([torch.cat(probs).float(), torch.cat(labels).float()])
    ids = all_gather_rows(ids.view(1, -1))[0].numpy()
    values = all_gather_rows(values).numpy()
    order = np.argsort(ids, kind="stable")
    return ids[order], values[0][order], values[1][order]


__all__ = ["Evaluation", "evaluate"]
