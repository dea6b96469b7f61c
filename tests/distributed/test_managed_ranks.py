"""Managed tables over two gloo processes: the remap sharded row-wise, exported, served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.data.featurize import featurize
from recsys.export.manifest import Manifest
from recsys.export.scorer import Scorer
from tests.synthetic import TinyLog, make_train


@pytest.mark.slow  # ~13 s; tests/model/test_managed.py keeps the one-process remap fast
@pytest.mark.distributed
def test_two_processes_shard_the_remap_and_the_scorer_reproduces_it(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    overrides = tiny_log.overrides + [
        "tracking=none",
        "trainer.epochs=2",
        "data.tables.user_id.hashing=managed",
        "data.tables.user_id.num_buckets=32",
        "data.tables.user_id.managed.admit_after=2",
        "data.tables.user_id.managed.eviction_interval=3",
    ]
    proc = make_train(2, tmp_path / "run", overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = (tmp_path / "run" / "sharding_plan.txt").read_text()
    user_row = next(line for line in plan.splitlines() if line.startswith("user_id "))
    assert "row_wise" in user_row and "[0, 1]" in user_row, plan  # each rank remaps half the ids

    export = tmp_path / "run" / "export"
    remap = Manifest.load(export).tables["user_id"]["remap"]
    assert remap["fallback_rows"] == [15, 31]  # one per row shard: its last row
    assert remap["input_block"] == (2**32 + 2) // 2
    records = pq.read_table(tiny_log.eval)
    predicted = pq.read_table(tmp_path / "run" / "eval_predictions.parquet")["prob"].to_numpy()
    scorer = Scorer(export)
    np.testing.assert_allclose(scorer.score(records), predicted, rtol=0, atol=1e-5)
    # Unseen users (the last 200 rows) read the fallback row of the shard owning their hash.
    ids = featurize(records, scorer.schema, with_labels=False).ids["user_id"][800:]
    rows = scorer.remaps["user_id"](ids)
    assert set(rows.tolist()) == {15, 31}
    np.testing.assert_array_equal(rows, np.where(ids < remap["input_block"], 15, 31))
