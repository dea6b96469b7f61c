"""recsys.metrics against scikit-learn, on one process and over two gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from recsys.metrics import MetricAccumulator, auc, compute_binary_metrics, log_loss
from tests.processes import free_port, gloo_group

SIZES = (701, 1299)  # rows on rank 0 and rank 1: unequal on purpose


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities on a coarse grid (many ties, across ranks too) and weights."""
    rng = np.random.default_rng(seed)
    probs = np.round(rng.uniform(0.05, 0.95, n), 1)  # 0.1 .. 0.9: no clipping at 0 or 1
    labels = (rng.uniform(size=n) < probs).astype(np.float64)
    weights = rng.uniform(0.1, 3.0, n)
    return labels, probs, weights


def _sklearn(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    return {
        "auc": roc_auc_score(labels, probs, sample_weight=weights),
        "log_loss": sk_log_loss(labels, probs, sample_weight=weights),
        "ctr": float(np.average(labels, weights=weights)),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighted", [True, False])
def test_auc_and_log_loss_equal_sklearn(seed: int, weighted: bool) -> None:
    labels, probs, weights = _data(2000, seed)
    w = weights if weighted else np.ones_like(weights)
    assert len(np.unique(probs)) < 15  # ties everywhere
    expected = _sklearn(labels, probs, w)
    t = [torch.from_numpy(a) for a in (labels, probs, w)]
    assert auc(*t) == pytest.approx(expected["auc"], abs=1e-12)
    assert log_loss(*t) == pytest.approx(expected["log_loss"], abs=1e-12)
    metrics = compute_binary_metrics(*t)
    assert metrics.ctr == pytest.approx(expected["ctr"], abs=1e-12)
    base = expected["ctr"]
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert metrics.ne == pytest.approx(expected["log_loss"] / entropy, rel=1e-12)
    assert metrics.calibration == pytest.approx(np.sum(w * probs) / np.sum(w * labels), rel=1e-12)


def _worker(rank: int, port: int, out: str) -> None:
    with gloo_group(rank, port):
        labels, probs, weights = (torch.from_numpy(a) for a in _data(SIZES[rank], 10 + rank))
        accumulator = MetricAccumulator()
        for part in torch.split(torch.arange(len(labels)), 128):  # batches, as in evaluation
            accumulator.update(labels[part], probs[part].float(), weights[part])
        Path(out, f"{rank}.json").write_text(json.dumps(accumulator.compute().as_dict()))


@pytest.mark.distributed
def test_two_gloo_processes_equal_one_process_and_sklearn(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank gets the global result
    parts = [_data(n, 10 + r) for r, n in enumerate(SIZES)]
    labels, probs, weights = (np.concatenate([p[i] for p in parts]) for i in range(3))
    probs = probs.astype(np.float32).astype(np.float64)  # the workers fed float32
    one = compute_binary_metrics(*(torch.from_numpy(a) for a in (labels, probs, weights)))
    for key, value in one.as_dict().items():
        assert ranks[0][key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    expected = _sklearn(labels, probs, weights)
    assert ranks[0]["auc"] == pytest.approx(expected["auc"], abs=1e-12)
    assert ranks[0]["log_loss"] == pytest.approx(expected["log_loss"], abs=1e-12)
