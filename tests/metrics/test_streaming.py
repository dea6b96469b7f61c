"""Metrics in bounded memory: reduced sums equal the exact metrics; histogram AUC stays within
its stated bound (<= 1e-4) of the exact AUC on score distributions that defeat a fixed grid;
evaluation state does not grow with the rows; per-rank prediction files merge in row order."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.metrics import auc, compute_binary_metrics
from recsys.metrics.predictions import PredictionSample, PredictionSpill, merge_parts
from recsys.metrics.streaming import (
    BinarySums,
    ScoreHistogram,
    histogram_auc,
    initial_edges,
)
from recsys.train.evaluator import _add, _State

N = 100_000
PROMISE = 1e-4  # the bound: |histogram AUC - exact AUC| <= 1e-4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _labels(n: int = N) -> torch.Tensor:
    return (torch.rand(n, dtype=torch.float64) < 0.25).double()


def _logits(y: torch.Tensor) -> torch.Tensor:
    return torch.randn(len(y), dtype=torch.float64) + 0.8 * y


# Scores a model can produce, several of which squeeze every row into one bin of any grid
# fixed in advance (a histogram over [0, 1] would see one bar).
DISTRIBUTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "logits": _logits,
    "logits as float32": lambda y: _logits(y).float().double(),
    "probabilities": lambda y: torch.sigmoid(_logits(y)),
    "within 1e-9 of 2.0": lambda y: 2.0 + 1e-9 * torch.sigmoid(_logits(y)),
    "within 1e-12 of 0.5": lambda y: 0.5 + 1e-12 * _logits(y),
    "saturated near 1": lambda y: 1.0 - 1e-6 * torch.sigmoid(-_logits(y)),
    "two far clusters": lambda y: torch.where(
        torch.rand(len(y)) < 0.5, 1e-8 * _logits(y), 1e6 + 1e-3 * _logits(y)
    ),
    "ties and infinities": lambda y: torch.where(
        torch.rand(len(y)) < 0.1, torch.tensor(math.inf, dtype=torch.float64), _logits(y).round()
    ),
    "constant": lambda y: torch.full_like(y, 0.3),
}


def _chunks(scores: torch.Tensor, y: torch.Tensor, w: torch.Tensor, size: int = 30_000):
    return lambda: [
        (scores[i : i + size], (w * y)[i : i + size], (w * (1 - y))[i : i + size])
        for i in range(0, len(y), size)
    ]


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_histogram_auc_is_within_its_bound_of_the_exact_auc(name: str) -> None:
    y = _labels()
    scores = DISTRIBUTIONS[name](y)
    w = torch.ones_like(y)
    result = histogram_auc(_chunks(scores, y, w), tolerance=PROMISE)
    exact = auc(y, scores)
    assert result.error_bound <= PROMISE, result
    assert abs(result.auc - exact) <= result.error_bound + 1e-12, (result, exact)


def test_weights_and_soft_labels() -> None:
    y, w = torch.rand(N, dtype=torch.float64), torch.rand(N, dtype=torch.float64) * 3
    scores = _logits((y > 0.5).double())
    result = histogram_auc(_chunks(scores, y, w), tolerance=PROMISE)
    exact = auc(y, scores, w)
    assert result.error_bound <= PROMISE and abs(result.auc - exact) <= result.error_bound + 1e-12


def test_tolerance_zero_is_exact_when_the_bins_allow() -> None:
    y = _labels(5000)
    scores = torch.sigmoid(_logits(y)).float().double()
    result = histogram_auc(_chunks(scores, y, torch.ones_like(y)), tolerance=0.0)
    assert result.error_bound == 0.0
    assert result.auc == pytest.approx(auc(y, scores), abs=1e-13)


def test_one_class_is_nan() -> None:
    y = torch.ones(100, dtype=torch.float64)
    result = histogram_auc(_chunks(torch.randn(100, dtype=torch.float64), y, torch.ones_like(y)))
    assert math.isnan(result.auc)


def test_sums_give_the_exact_metrics() -> None:
    y, w = _labels(10_000), torch.rand(10_000, dtype=torch.float64)
    p = torch.sigmoid(_logits(y))
    sums = BinarySums()
    for i in range(0, len(y), 999):
        sums.update(y[i : i + 999], p[i : i + 999], w[i : i + 999])
    exact = compute_binary_metrics(y, p, w).as_dict()
    for key, value in sums.metrics().items():
        assert value == pytest.approx(exact[key], rel=1e-12), key


def test_empty_sums_are_nan() -> None:
    metrics = BinarySums().metrics()
    assert metrics["num_examples"] == 0.0
    assert all(math.isnan(metrics[k]) for k in ("log_loss", "ne", "calibration", "ctr"))


# ------------------------------------------------------------------------ bounded memory


def _state_bytes(state: _State) -> int:
    histogram, sample = state.histogram, state.sample
    tensors = [histogram.pos, histogram.neg, histogram.low, histogram.high, sample._rows]
    return sum(t.numel() * t.element_size() for t in [*tensors, state.sums.values])


def test_evaluation_state_does_not_grow_with_the_rows(tmp_path: Path) -> None:
    """What a rank keeps while evaluating: the same bytes after 4x the rows (rows go to disk)."""
    state, spill = _State(), PredictionSpill(tmp_path / "part.parquet")
    state.sample.size = 1000
    sizes = []
    for batch in range(40):
        ids = torch.arange(batch * 4096, (batch + 1) * 4096)
        y = (torch.rand(4096) < 0.3).float()
        _add(state, spill, ids, torch.randn(4096), y, torch.ones(4096))
        if batch in (9, 39):
            sizes.append(_state_bytes(state))
    spill.close()
    assert sizes[0] == sizes[1]
    assert sizes[1] < 8 * len(initial_edges()) * 5 + 2 * 4 * 1000 * 8  # bins + a 2x sample
    assert pq.ParquetFile(spill.path).metadata.num_rows == 40 * 4096


def test_the_sample_is_the_same_rows_whatever_the_split() -> None:
    ids = torch.randperm(50_000)
    probs, labels = torch.rand(50_000), (torch.rand(50_000) < 0.5).float()
    one, two = PredictionSample(1000), [PredictionSample(1000), PredictionSample(1000)]
    one.add(ids, probs, labels)
    for part, sample in zip(torch.chunk(torch.arange(50_000), 2), two, strict=True):
        sample.add(ids[part], probs[part], labels[part])
    merged = PredictionSample(1000)
    for sample in two:
        merged.add(*(torch.from_numpy(a) for a in sample.gather()))
    assert (one.gather()[0] == merged.gather()[0]).all()
    assert len(one.gather()[0]) == 1000 and (np.diff(one.gather()[0]) > 0).all()


def test_parts_merge_in_row_order(tmp_path: Path) -> None:
    """Two ranks' parts, each reading every other row group of the files, interleave."""
    parts = []
    for rank in range(2):
        spill = PredictionSpill(tmp_path / f"part-{rank}.parquet")
        for unit in range(rank, 12, 2):
            ids = np.arange(unit * 1000, (unit + 1) * 1000)
            rows = {"row_id": ids, "prob": (ids / 12_000).astype(np.float32)}
            zeros = np.zeros(1000, np.float32)
            spill.append(rows | {"logit": zeros, "label": zeros, "weight": zeros})
            spill._flush()  # a row group per unit, as a long evaluation writes them
        spill.close()
        parts.append(spill.path)
    assert merge_parts(parts, tmp_path / "merged.parquet") == 12_000
    merged = pq.read_table(tmp_path / "merged.parquet")
    assert merged.column_names == ["row_id", "prob"]
    assert merged["row_id"].to_pylist() == list(range(12_000))


def test_a_histogram_of_refined_edges_keeps_every_row() -> None:
    y = _labels(10_000)
    scores = 2.0 + 1e-9 * torch.sigmoid(_logits(y))
    histogram = ScoreHistogram(initial_edges())
    histogram.update(scores, y, 1 - y)
    edges = histogram.refined_edges(1e-6, 1 << 18)
    assert edges is not None and len(edges) > len(initial_edges())
    again = ScoreHistogram(edges)
    again.update(scores, y, 1 - y)
    assert float(again.pos.sum() + again.neg.sum()) == 10_000
    assert again.auc()[1] < histogram.auc()[1]
