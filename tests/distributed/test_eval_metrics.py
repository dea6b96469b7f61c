"""Evaluation metrics over two gloo ranks without gathering rows: each rank's predictions go to
its own file, the sums are all-reduced, AUC's histogram is refined over both ranks' files; the
result equals the single-process exact metrics (AUC within its stated bound, <= 1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from recsys.metrics import MetricAccumulator, auc, compute_binary_metrics
from recsys.metrics.binary import GATHER_ROWS
from recsys.metrics.predictions import PredictionSpill
from recsys.metrics.streaming import BinarySums, histogram_auc
from tests.processes import free_port, gloo_group

SIZES = (30_001, 50_000)  # uneven ranks, more rows than MetricAccumulator gathers
# Scores squeezed into a range no fixed grid resolves, and ordinary ones.
KINDS = ("narrow", "logits")


def _rank_rows(rank: int, kind: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(10 + rank)
    n = SIZES[rank]
    y = (torch.rand(n, generator=g) < 0.3).float()
    logit = torch.randn(n, generator=g) + 0.7 * y
    if kind == "narrow":
        logit = 3.0 + 1e-5 * torch.tanh(logit)  # float32: a few dozen distinct values
    weight = torch.rand(n, generator=g) + 0.5
    return torch.arange(n) + rank * 10**6, logit, y, weight


def _worker(rank: int, port: int, out: str) -> None:
    with gloo_group(rank, port):
        results = {}
        for kind in KINDS:
            ids, logit, y, w = _rank_rows(rank, kind)
            spill = PredictionSpill(Path(out) / f"{kind}-{rank}.parquet")
            for i in range(0, len(ids), 4096):  # batches, as the evaluator writes them
                part = slice(i, i + 4096)
                spill.append({"row_id": ids[part].numpy(), "prob": torch.sigmoid(logit[part]).numpy(),
                              "logit": logit[part].numpy(), "label": y[part].numpy(),
                              "weight": w[part].numpy()})  # fmt: skip
            spill.close()
            result = histogram_auc(spill.chunks, tolerance=1e-4)
            sums = BinarySums()
            sums.update(y.double(), torch.sigmoid(logit).double(), w.double())
            results[kind] = {"auc": result.auc, "bound": result.error_bound,
                             **sums.all_reduce().metrics()}  # fmt: skip
            accumulator = MetricAccumulator()  # rows in memory, more than it would gather
            accumulator.update(y, torch.sigmoid(logit.double()), w)
            metrics = accumulator.compute().as_dict()
            results[f"{kind}/accumulator"] = metrics | {"bound": accumulator.auc_error_bound}
        Path(out, f"{rank}.json").write_text(json.dumps(results))


@pytest.mark.distributed
def test_two_ranks_equal_one_exact_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank gets the global result
    for kind in KINDS:
        parts = [_rank_rows(r, kind) for r in range(2)]
        _, logit, y, w = (torch.cat([p[i] for p in parts]) for i in range(4))
        got = ranks[0][kind]
        exact_auc = auc(y, logit, w)
        assert got["bound"] <= 1e-4, (kind, got)
        assert abs(got["auc"] - exact_auc) <= got["bound"] + 1e-12, (kind, got, exact_auc)
        exact = compute_binary_metrics(y, torch.sigmoid(logit), w).as_dict()
        for key in ("log_loss", "ne", "calibration", "ctr", "num_examples"):
            assert got[key] == pytest.approx(exact[key], rel=1e-9), (kind, key)
        accumulated = ranks[0][f"{kind}/accumulator"]
        assert sum(SIZES) > GATHER_ROWS and accumulated["bound"] <= 1e-6, accumulated
        exact_auc = auc(y, torch.sigmoid(logit.double()), w)
        assert abs(accumulated["auc"] - exact_auc) <= accumulated["bound"] + 1e-12, kind
        for key in ("log_loss", "ne", "calibration", "ctr", "num_examples"):
            assert accumulated[key] == pytest.approx(exact[key], rel=1e-6), (kind, key)
