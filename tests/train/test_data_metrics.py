"""Rows trained and rows skipped as bad reach the run's metrics (never a silently short epoch)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.compose import load_config
from recsys.train.recipe import run
from tests.synthetic import make_click_log


# 0: the default read-ahead thread; 2: worker processes (counts cross the process boundary)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_skipped_rows_are_counted_by_reason_in_the_metrics(tiny_log, tmp_path, num_workers):
    table = make_click_log(1000, seed=1)
    labels = table.column("label").to_numpy().copy()
    labels[[10, 500, 501]] = 7  # not a 0/1 label
    table = table.set_column(0, "label", pa.array(labels, pa.int8()))
    train = tmp_path / "bad_train.parquet"
    pq.write_table(table, train, row_group_size=300)
    cfg = load_config(
        tiny_log.overrides
        + [
            f"data.train_path={train}",
            "data.on_bad_row=skip",
            "trainer.epochs=2",
            "tracking=none",
            "export.enabled=false",
            f"trainer.num_workers={num_workers}",
        ],
        output_dir=str(tmp_path / "run"),
    )
    history = run(cfg).history
    per_epoch = [h for h in history if "data/rows_trained" in h]
    assert len(per_epoch) == 2
    for h in per_epoch:
        assert h["data/rows_trained"] == 1000 - 50 - 3  # 50: the last 5%, held out to validate
        assert h["data/bad_rows"] == 3
        assert h["data/bad_rows/bad_label"] == 3
