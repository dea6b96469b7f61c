"""Two "machines": two torchrun launchers, `--nnodes=2`, one c10d rendezvous on 127.0.0.1.

What README's multi-node section tells users to run on each host, run here twice on one host:
each launcher starts one process, the c10d rendezvous makes them ranks 0 and 1 of one job.
The job must train, checkpoint, resume and export exactly as `make train NPROC=2` does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.export.scorer import Scorer
from tests.processes import free_port
from tests.synthetic import REPO_ROOT, make_train

TORCHRUN = REPO_ROOT / ".venv" / "bin" / "torchrun"


def two_node_train(out: Path, overrides: list[str], job: str) -> list[subprocess.CompletedProcess]:
    """The README's multi-node command, one launcher per "host", both on 127.0.0.1."""
    port = free_port()
    cmd = [
        str(TORCHRUN),
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        f"--rdzv_id={job}",
        "--local_addr=127.0.0.1",
        "-m",
        "recsys.cli.train",
        f"hydra.run.dir={out}",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launchers = [
        subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    done = []
    for launcher in launchers:
        stdout, stderr = launcher.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(cmd, launcher.returncode, stdout, stderr))
    return done


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_train_resume_and_export_like_nproc_2(tiny_log, tmp_path: Path) -> None:
    overrides = [
        *tiny_log.overrides,
        "tracking=none",
        "trainer.deterministic=true",
        "data.tables.user_id.num_buckets=65536",  # table-wise over the two ranks: real shards
    ]
    reference = make_train(2, tmp_path / "nproc2", [*overrides, "trainer.epochs=2"])
    assert reference.returncode == 0, reference.stderr[-3000:]

    nodes = tmp_path / "nnodes2"
    first = two_node_train(nodes, [*overrides, "trainer.epochs=1"], "first")
    assert all(p.returncode == 0 for p in first), [p.stderr[-3000:] for p in first]
    assert (nodes / "sharding_plan.txt").read_text().count("rank:1/cpu") >= 1
    resumed = two_node_train(
        nodes, [*overrides, "trainer.epochs=2", f"trainer.resume={nodes}"], "resumed"
    )
    assert all(p.returncode == 0 for p in resumed), [p.stderr[-3000:] for p in resumed]
    assert sum("resumed from" in p.stdout + p.stderr for p in resumed) >= 1

    expected = pq.read_table(tmp_path / "nproc2" / "eval_predictions.parquet")
    got = pq.read_table(nodes / "eval_predictions.parquet")
    assert got["row_id"].to_pylist() == expected["row_id"].to_pylist()
    np.testing.assert_allclose(
        got["prob"].to_numpy(), expected["prob"].to_numpy(), rtol=0, atol=1e-6
    )
    scores = Scorer(nodes / "export").score(pq.read_table(tiny_log.eval))
    np.testing.assert_allclose(scores, expected["prob"].to_numpy(), rtol=0, atol=1e-5)
