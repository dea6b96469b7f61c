"""`make train NPROC=2`: two real torchrun processes (gloo), exact metrics, export from shards."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.compose import load_config
from recsys.export.scorer import Scorer
from recsys.metrics import auc
from recsys.train.recipe import run
from tests.synthetic import make_train


@pytest.mark.distributed
def test_two_gloo_processes_train_export_and_match_one_process(tiny_log, tmp_path: Path) -> None:
    # MovieLens-size id tables, so the planner shards them table-wise over the two ranks and
    # the export has to gather real shards.
    big_tables = ["data.tables.user_id.num_buckets=65536", "data.tables.item_id.num_buckets=65536"]
    overrides = tiny_log.overrides + ["tracking=none", "trainer.epochs=4", *big_tables]
    proc = make_train(2, tmp_path / "two", overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = (tmp_path / "two" / "sharding_plan.txt").read_text()
    assert "table_wise" in plan and "rank:1/cpu" in plan, plan
    assert (
        "eval AUC" in proc.stdout and proc.stdout.count("== recsys run finished ==") == 1
    )  # rank 0 only

    predictions = pq.read_table(tmp_path / "two" / "eval_predictions.parquet")
    labels = pq.read_table(tiny_log.eval)["label"].to_numpy()
    assert predictions["row_id"].to_pylist() == list(range(len(labels)))  # every eval row once
    two = auc(torch.tensor(labels), torch.tensor(predictions["prob"].to_numpy()))

    one = run(load_config(overrides, output_dir=str(tmp_path / "one"))).metrics["eval/auc"]
    assert abs(two - one) < 0.03, (one, two)
    assert two > 0.6

    # The export gathered from 2 ranks' shards scores like the sharded model did.
    scores = Scorer(tmp_path / "two" / "export").score(pq.read_table(tiny_log.eval))
    np.testing.assert_allclose(scores, predictions["prob"].to_numpy(), rtol=0, atol=1e-5)


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("sharding", "model"),
    [
        ("row_wise", "dlrm"),  # TorchRec offers row-wise on CUDA only; recsys adds it on CPU
        pytest.param("column_wise", "dlrm", marks=pytest.mark.slow),
        pytest.param("table_column_wise", "dlrm", marks=pytest.mark.slow),
        pytest.param("data_parallel", "dlrm", marks=pytest.mark.slow),
        pytest.param("row_wise", "dcn", marks=pytest.mark.slow),
        pytest.param("column_wise", "mf", marks=pytest.mark.slow),  # vectors split over ranks
        # Biases in the rows' last columns: the export cuts them out of each rank's shards.
        pytest.param("row_wise", "dlrm+bias_in_rows", marks=pytest.mark.slow),
        pytest.param("column_wise", "dlrm+bias_in_rows", marks=pytest.mark.slow),
    ],
)
def test_forced_sharding_type_trains_and_exports(
    tiny_log, tmp_path: Path, sharding: str, model: str
) -> None:
    model, _, option = model.partition("+")
    overrides = tiny_log.overrides + [
        "tracking=none",
        f"sharding={sharding}",
        f"model={model}",
        "data.tables.user_id.num_buckets=65536",
    ]
    overrides += [f"model.{option}=true"] if option else []
    proc = make_train(2, tmp_path / "run", overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = (tmp_path / "run" / "sharding_plan.txt").read_text()
    user_row = next(line for line in plan.splitlines() if line.startswith("user_id "))
    assert sharding in user_row, plan
    if sharding == "row_wise":
        assert "[0, 1]" in user_row  # one table, rows split over both ranks
    predictions = pq.read_table(tmp_path / "run" / "eval_predictions.parquet")
    labels = torch.tensor(pq.read_table(tiny_log.eval)["label"].to_numpy())
    assert auc(labels, torch.tensor(predictions["prob"].to_numpy())) > 0.6
    scores = Scorer(tmp_path / "run" / "export").score(pq.read_table(tiny_log.eval))
    np.testing.assert_allclose(scores, predictions["prob"].to_numpy(), rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_the_first_order_stage_then_the_whole_model(
    tiny_log, tmp_path: Path
) -> None:
    # The stage is a run of its own: its process group ends and the whole model's starts anew.
    overrides = tiny_log.overrides + ["tracking=none", "trainer.epochs=2"]
    proc = make_train(2, tmp_path / "run", [*overrides, "trainer.first_order_stage=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    assert logs.count("first-order stage done") == 1  # said by rank 0 only
    assert f"warm start from {tmp_path / 'run' / 'first_order_stage'}" in logs
    assert list((tmp_path / "run" / "first_order_stage" / "checkpoints").iterdir())
    scores = Scorer(tmp_path / "run" / "export").score(pq.read_table(tiny_log.eval))
    predictions = pq.read_table(tmp_path / "run" / "eval_predictions.parquet")
    np.testing.assert_allclose(scores, predictions["prob"].to_numpy(), rtol=0, atol=1e-5)

    # Stopped inside its stage after one epoch, the run resumes the stage on both ranks, then
    # trains the whole model: the same predictions as without the stop.
    stage = tmp_path / "run" / "first_order_stage"
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    (stage / "done").unlink()
    shutil.rmtree(max((stage / "checkpoints").iterdir(), key=lambda p: int(p.name[5:])))
    again = make_train(2, tmp_path / "again", [*overrides, f"trainer.resume={tmp_path / 'run'}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {stage / 'checkpoints'}" in again.stdout + again.stderr
    resumed = pq.read_table(tmp_path / "again" / "eval_predictions.parquet")
    np.testing.assert_allclose(
        resumed["prob"].to_numpy(), predictions["prob"].to_numpy(), atol=1e-6
    )
