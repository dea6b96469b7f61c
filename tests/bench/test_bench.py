"""The benchmarks run end to end on tiny inputs (their numbers are checked by `make bench`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from recsys.bench import compare, limits, loader, memory, training
from recsys.bench.baselines import DLRMShape, PlainLoop, TorchRecLoop
from recsys.bench.fixtures import big_tsv, criteo_config, criteo_logs
from recsys.distributed.env import init_distributed, shutdown_distributed
from recsys.schema import resolve_schema
from recsys.train.build import datasets


@pytest.fixture(scope="module")
def tiny_criteo(tmp_path_factory):
    return criteo_logs(3000, root=tmp_path_factory.mktemp("bench"))


def test_loader_bench_reads_every_row_from_parquet_and_tsv(tiny_criteo):
    rows = loader.bench_loader(tiny_criteo, workers=(0,))
    assert {r["input"] for r in rows} == {"parquet", "tsv"}
    assert all(r["rows"] == 3000 and r["rows_per_s"] > 0 for r in rows)


def test_training_bench_compares_the_same_number_of_steps(tiny_criteo, tmp_path):
    cfg = criteo_config(tiny_criteo.parquet, "parquet", ["trainer.batch_size=256"])
    cfg.output_dir = str(tmp_path)
    row = training.bench_training(cfg, steps=4, rounds=1)
    assert row["memory_samples_per_s"] > 0 and row["loader_samples_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["loader_samples_per_s"] / row["memory_samples_per_s"])


def _tiny_limits() -> limits.MachineLimits:
    return limits.machine_limits(matmul_n=64, copy_mib=1, repeats=1)


def test_compare_times_every_contender_on_the_same_batches(tiny_criteo, tmp_path):
    report = compare.bench_compare(tiny_criteo, (256,), {256: 3}, rounds=1, limits=_tiny_limits)
    (row,) = report["batch_sizes"]
    names = {"recsys_loader", "recsys_premade", "torchrec_dlrm", "plain_pytorch"}
    assert names <= set(row["samples_per_s"]) and row["steps"] == 3
    assert all(rate > 0 for rate in row["samples_per_s"].values())
    premade, torchrec = (
        row["samples_per_s"]["recsys_premade"],
        row["samples_per_s"]["torchrec_dlrm"],
    )
    assert row["ratios"]["recsys_premade_over_torchrec_dlrm"] == pytest.approx(premade / torchrec)
    assert row["targets"]["recsys_loader_over_recsys_premade"] == 0.95
    assert row["fraction_of_limits"]["recsys_premade"]["flops_fraction"] > 0
    assert report["limits"]["matmul_flops_per_s"] > 0


def test_baselines_learn_on_the_batches_they_are_timed_on(tiny_criteo):
    """Both baselines train the model they claim to: the training loss goes down."""
    cfg = criteo_config(tiny_criteo.parquet, "parquet", ["trainer.batch_size=256"])
    cfg.trainer.lr, cfg.trainer.sparse_lr = 0.01, 0.05
    env = init_distributed("cpu")
    try:
        schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
        batches = training.premade(datasets(cfg, schema, env).train, 4).batches
        shape = DLRMShape.from_config(cfg, schema)
        for loop in (TorchRecLoop(schema, shape, batches[:1], env.device),
                     PlainLoop(schema, shape, batches[:1], env.device)):  # fmt: skip
            losses = [_loss(loop) for _ in range(30)]
            assert losses[-1] < 0.9 * losses[0], type(loop).__name__
    finally:
        shutdown_distributed()


def _loss(loop: TorchRecLoop | PlainLoop) -> float:
    loop.run(1)
    with torch.no_grad():
        if isinstance(loop, TorchRecLoop):
            return float(loop.model(loop.batches[0])[0])
        dense, bags, labels = loop.batches[0]
        logits = loop.model(dense, bags)
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))


def test_sample_cost_counts_dlrm_flops_and_embedding_bytes():
    cost = limits.dlrm_sample_cost(
        num_dense=13, dense_arch=(32,), num_sparse=26, dim=16, over_arch=(64, 32),
        ids_per_sample=26, bias_width=4,
    )  # fmt: skip
    dense = 2 * (13 * 32 + 32 * 16)
    gram = 2 * 27 * 27 * 16
    over = 2 * ((16 + 27 * 26 // 2) * 64 + 64 * 32 + 32 * 1)
    assert cost.forward_flops == dense + gram + over and cost.flops == 3 * cost.forward_flops
    # read in forward, read + written by the update, 1 float of row-wise state read + written
    assert cost.embedding_bytes == 26 * ((3 * 16 + 2) * 4 + (3 * 4 + 2) * 4)
    # Known limits, not measured ones: a tiny matmul timed once on a busy machine can be
    # slower than the rate it is compared with.
    machine = limits.MachineLimits(1e11, 2e10, 3e10, threads=1, matmul_n=64, copy_mib=1)
    f = limits.fractions(1000.0, cost, machine)
    assert f["flops_fraction"] == pytest.approx(1000.0 * cost.flops / 1e11)
    assert f["bandwidth_fraction"] == pytest.approx(1000.0 * cost.embedding_bytes / 3e10)
    measured = _tiny_limits()
    assert measured.matmul_flops_per_s > 0 and measured.bandwidth_bytes_per_s > 0


def test_big_tsv_repeats_the_source_lines(tiny_criteo, tmp_path):
    source_bytes = sum(p.stat().st_size for p in tiny_criteo.tsv.glob("*.tsv"))
    big = big_tsv(tiny_criteo.tsv, 3 * source_bytes, root=tmp_path)
    assert big.stat().st_size == 3 * source_bytes
    first = (tiny_criteo.tsv / "part-00000.tsv").read_bytes()
    assert big.read_bytes()[: len(first)] == first


@pytest.mark.slow
def test_memory_bench_child_reports_peak_rss(tiny_criteo):
    row = memory.measure(tiny_criteo.tsv / "part-00000.tsv", "stream", steps=0)
    assert row["rows"] == 3000 and row["main_peak_mib"] > 50


@pytest.mark.slow
def test_quick_bench_writes_every_part_to_its_json(tmp_path):
    """`python -m recsys.bench --quick`: every part on tiny inputs, 1 vs 2 processes too."""
    out = tmp_path / "report.json"
    env = {**os.environ, "RECSYS_BENCH_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "recsys.bench", "--quick", "--rows", "3000", "--json", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=900)
    report = json.loads(out.read_text())
    assert {"hashing", "loader", "compare", "processes"} <= set(report)
    assert [r["batch_size"] for r in report["compare"]["batch_sizes"]] == [512, 4096]
    assert set(report["processes"]["samples_per_s"]) == {"1_process", "2_process"}
