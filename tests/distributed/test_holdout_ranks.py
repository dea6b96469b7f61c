"""data.holdout on 2 gloo processes x 2 loader workers: each row trained or validated, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic import REPO_ROOT, TinyLog


@pytest.mark.distributed
def test_two_processes_with_workers_train_or_validate_every_row_exactly_once(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    out = tmp_path / "rows.json"
    overrides = tiny_log.overrides + [  # shuffled files and rows, as the tiny log's runs are
        "tracking=none",
        "trainer.num_workers=2",
        "data.holdout.fraction=0.1",  # the cut falls inside a row group: its rows split
    ]
    script = REPO_ROOT / "tests" / "distributed" / "holdout_rows.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(script), str(out), "2", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    held = list(range(2700, 3000))  # the last 10% of the 3000 rows, in file order
    assert rows["validated"] == held  # gathered from both ranks, sorted by row id
    for trained in rows["trained"]:  # every epoch: the same split
        assert trained == list(range(2700))  # once each (sorted, no repeats), none held out
