"""Checkpoint, evaluation and export over two gloo ranks whose tables are larger than rank 0
could hold twice: no rank copies its table shards, and nothing is gathered onto rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic import REPO_ROOT

BUCKETS = 4_000_000  # user_id and item_id: 2 x 4e6 x (16 + 4) floats = 610 MiB, half a rank
MAX_RATIO = 1.15  # a phase's peak RSS over training's


@pytest.mark.slow
@pytest.mark.distributed
def test_phases_add_a_chunk_not_a_copy_of_the_tables(tiny_log, tmp_path: Path) -> None:
    overrides = tiny_log.overrides + [
        "tracking=none",
        "sharding=row_wise",  # every table split over both ranks: each holds half its rows
        f"data.tables.user_id.num_buckets={BUCKETS}",
        f"data.tables.item_id.num_buckets={BUCKETS}",
        "trainer.max_steps=10",
        "trainer.checkpoint.at_epoch_end=false",  # the script checkpoints, measured alone
        "trainer.early_stopping.enabled=false",
    ]
    out = tmp_path / "rss.json"
    script = REPO_ROOT / "tests" / "distributed" / "scale_rss.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [*cmd, str(script), str(out), *overrides],
        capture_output=True, text=True, timeout=900, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank, row in enumerate(json.loads(out.read_text())["ranks"]):
        assert row["held_mib"] > 250, row  # the tables dominate what a rank holds
        for phase in ("checkpoint", "evaluate", "export"):
            added = row[phase] - row[f"{phase}_from"]
            # A copy of the rank's shards (or a gather of whole tables) would add >= held_mib.
            assert added < 0.3 * row["held_mib"], (rank, phase, row)
            assert row[phase] / row["train"] <= MAX_RATIO, (rank, phase, row)
    assert (tmp_path / "run" / "export" / "manifest.json").is_file()
