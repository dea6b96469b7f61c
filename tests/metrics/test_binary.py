"""Tests for recsys.metrics.binary: exactness against brute-force / numpy references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from recsys.metrics import (
    BinaryMetrics,
    MetricAccumulator,
    auc,
    calibration,
    compute_binary_metrics,
    ctr,
    log_loss,
    normalized_entropy,
)
from tests.processes import free_port, gloo_group


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _random_data(
    n: int, seed: int, decimals: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels, probabilities rounded to ``decimals`` (many ties) and positive weights."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.round(torch.rand(n, generator=g, dtype=torch.float64), decimals=decimals)
    probs = probs.clamp(0.05, 0.95)
    labels = (torch.rand(n, generator=g, dtype=torch.float64) < probs).to(torch.float64)
    weights = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.1
    return labels, probs, weights


def _brute_force_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """O(n^2) pairwise AUC: pos>neg counts 1, ties 0.5, each pair weighted w_i * w_j."""
    pos, neg = labels == 1, labels == 0
    sp, sn = scores[pos][:, None], scores[neg][None, :]
    pair_w = weights[pos][:, None] * weights[neg][None, :]
    wins = (sp > sn) + 0.5 * (sp == sn)
    return float((pair_w * wins).sum() / pair_w.sum())


def _np_log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(p, eps, 1 - eps)
    return float(np.sum(-w * (y * np.log(p) + (1 - y) * np.log(1 - p))) / np.sum(w))


@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auc_matches_brute_force_with_ties(use_weights: bool, seed: int) -> None:
    labels, probs, weights = _random_data(700, seed)
    w = weights if use_weights else None
    w_np = weights.numpy() if use_weights else np.ones(len(labels))
    expected = _brute_force_auc(labels.numpy(), probs.numpy(), w_np)
    assert auc(labels, probs, w) == pytest.approx(expected, abs=1e-9)


def test_auc_float32_inputs_and_2d_shapes() -> None:
    labels, probs, _ = _random_data(300, 7, decimals=2)
    expected = _brute_force_auc(labels.numpy(), probs.float().double().numpy(), np.ones(300))
    assert auc(labels.float().view(-1, 1), probs.float().view(-1, 1)) == pytest.approx(
        expected, abs=1e-9
    )


def test_auc_edge_cases() -> None:
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    scores = torch.tensor([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert auc(labels, scores) == 1.0
    assert auc(labels, -scores) == 0.0
    assert auc(labels, torch.full_like(scores, 0.4)) == 0.5
    assert math.isnan(auc(torch.ones(5), torch.rand(5)))
    assert math.isnan(auc(torch.zeros(5), torch.rand(5)))
    assert math.isnan(auc(torch.zeros(0), torch.zeros(0)))


def test_auc_large_input_is_fast() -> None:
    labels, probs, weights = _random_data(2_000_000, 11, decimals=3)
    value = auc(labels, probs, weights)
    assert 0.5 < value < 1.0


@pytest.mark.parametrize("use_weights", [False, True])
def test_log_loss_ne_calibration_ctr_match_numpy(use_weights: bool) -> None:
    labels, probs, weights = _random_data(5000, 5, decimals=4)
    probs[:3] = torch.tensor([0.0, 1.0, 1e-12])  # exercise the eps clamp
    w = weights if use_weights else None
    y, p = labels.numpy(), probs.numpy()
    w_np = weights.numpy() if use_weights else np.ones(len(y))

    ll = _np_log_loss(y, p, w_np)
    base = np.sum(w_np * y) / np.sum(w_np)
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert log_loss(labels, probs, w) == pytest.approx(ll, rel=1e-12)
    assert normalized_entropy(labels, probs, w) == pytest.approx(ll / entropy, rel=1e-12)
    assert calibration(labels, probs, w) == pytest.approx(
        np.sum(w_np * p) / np.sum(w_np * y), rel=1e-12
    )
    assert ctr(labels, w) == pytest.approx(base, rel=1e-12)


def test_ne_of_base_rate_prediction_is_one() -> None:
    labels, _, weights = _random_data(1000, 9)
    base = float((labels * weights).sum() / weights.sum())
    assert normalized_entropy(labels, torch.full_like(labels, base), weights) == pytest.approx(
        1.0, abs=1e-12
    )
    base_unweighted = float(labels.mean())
    assert normalized_entropy(labels, torch.full_like(labels, base_unweighted)) == pytest.approx(
        1.0, abs=1e-12
    )


def test_degenerate_denominators_are_nan() -> None:
    empty = torch.zeros(0)
    for value in (log_loss(empty, empty), normalized_entropy(empty, empty), ctr(empty)):
        assert math.isnan(value)
    assert math.isnan(calibration(torch.zeros(4), torch.rand(4)))


def test_zero_weight_rows_are_ignored() -> None:
    labels, probs, weights = _random_data(500, 13)
    base = compute_binary_metrics(labels, probs, weights)
    junk = 200
    g = torch.Generator().manual_seed(99)
    labels2 = torch.cat([labels, (torch.rand(junk, generator=g) < 0.5).double()])
    probs2 = torch.cat([probs, torch.rand(junk, generator=g, dtype=torch.float64)])
    probs2[-1] = float("nan")  # even garbage predictions on padding must not leak
    weights2 = torch.cat([weights, torch.zeros(junk, dtype=torch.float64)])
    perm = torch.randperm(len(labels2), generator=g)
    padded = compute_binary_metrics(labels2[perm], probs2[perm], weights2[perm])
    for key, value in base.as_dict().items():
        assert padded.as_dict()[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_compute_binary_metrics_and_as_dict() -> None:
    labels, probs, weights = _random_data(400, 17)
    m = compute_binary_metrics(labels, probs, weights)
    assert isinstance(m, BinaryMetrics)
    assert m.auc == auc(labels, probs, weights)
    assert m.log_loss == log_loss(labels, probs, weights)
    assert m.ne == normalized_entropy(labels, probs, weights)
    assert m.calibration == calibration(labels, probs, weights)
    assert m.ctr == ctr(labels, weights)
    assert m.num_examples == pytest.approx(float(weights.sum()), rel=1e-15)
    d = m.as_dict("eval/")
    assert set(d) == {f"eval/{k}" for k in ("auc", "log_loss", "ne", "calibration", "ctr")} | {
        "eval/num_examples"
    }
    assert compute_binary_metrics(labels, probs).num_examples == 400.0


def test_accumulator_single_process_matches_full_batch() -> None:
    labels, probs, weights = _random_data(1000, 21)
    acc = MetricAccumulator()
    for chunk in torch.split(torch.arange(1000), 137):
        acc.update(labels[chunk], probs[chunk].float().requires_grad_(), weights[chunk])
    expected = compute_binary_metrics(labels, probs.float(), weights)
    assert acc.compute() == expected
    acc.reset()
    empty = acc.compute()
    assert empty.num_examples == 0.0
    assert math.isnan(empty.auc)
    acc.update(labels, probs)
    assert acc.compute() == compute_binary_metrics(labels, probs)


_RANK_SIZES = (613, 1377)


def _rank_data(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _random_data(_RANK_SIZES[rank], seed=100 + rank, decimals=2)


def _distributed_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, port, world_size):
        labels, probs, weights = _rank_data(rank)
        acc = MetricAccumulator()
        for chunk in torch.split(torch.arange(len(labels)), 250):
            acc.update(labels[chunk], probs[chunk], weights[chunk])
        result = acc.compute()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result.as_dict()))


@pytest.mark.distributed
def test_accumulator_two_rank_gloo_is_exact(tmp_path: Path) -> None:
    world_size = 2
    mp.spawn(
        _distributed_worker,
        args=(world_size, free_port(), str(tmp_path)),
        nprocs=world_size,
        join=True,
    )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert results[0] == results[1]

    parts = [_rank_data(r) for r in range(world_size)]
    labels, probs, weights = (torch.cat([p[i] for p in parts]) for i in range(3))
    expected = compute_binary_metrics(labels, probs, weights).as_dict()
    assert expected["num_examples"] == pytest.approx(float(weights.sum()), rel=1e-15)
    for key, value in expected.items():
        assert results[0][key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
