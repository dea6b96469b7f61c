"""`recsys-train` checks the whole config before Hydra makes a run folder or MLflow a run.

A typo exits 2 with one line naming the key and the valid values: no traceback, no outputs/
folder, no tracking store. The subprocess tests run the installed console script, as a user
would, in an empty working folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.cli.overrides import SingleRun, single_run_args
from recsys.cli.train import config_problem
from tests.synthetic import TinyLog

SCRIPT = Path(sys.executable).with_name("recsys-train")  # installed by `make setup`


@pytest.mark.parametrize(
    ("typo", "says"),
    [
        ("trainer.lr_schedule.decay=cosin", "[none, linear, cosine, step]"),
        ("sharding.type=rowwise", "row_wise"),
        ("trainer.epochs=0", "must be >= 1"),
        ("trainer.checkpoint.every_n_steps=0", "or null"),
    ],
)
def test_typo_exits_2_before_any_side_effect(
    tiny_log: TinyLog, tmp_path: Path, typo: str, says: str
) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    store = tmp_path / "mlruns.db"
    args = [*tiny_log.overrides, f"tracking.uri=sqlite:///{store}", typo]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    key = typo.split("=")[0]
    line = proc.stderr.strip()
    assert line.startswith("error: ") and key in line and says in line, line
    assert "Traceback" not in proc.stdout + proc.stderr
    assert list(cwd.iterdir()) == []  # no outputs/, no mlruns/
    assert not store.exists()  # no MLflow run (the store is made when a run opens)


def test_single_run_args_reads_hydra_flags() -> None:
    assert single_run_args([]) == SingleRun([], None, "train")
    assert single_run_args(["-cd", "mine", "--config-name=exp", "trainer.lr=1"]) == SingleRun(
        ["trainer.lr=1"], "mine", "exp"
    )
    for argv in (
        ["--multirun", "trainer.lr=1,2"],
        ["-m", "trainer.lr=1"],
        ["hydra.mode=MULTIRUN", "trainer.lr=1,2"],
        ["--cfg", "job"],
        ["--help"],
        ["--info", "searchpath"],
    ):
        assert single_run_args(argv) is None, argv  # no single run: nothing to check up front


def test_config_problem_names_key_and_valid_values() -> None:
    assert config_problem([]) is None
    problem = config_problem(["trainer.early_stopping.metric=aucc"])
    assert problem is not None
    assert "trainer.early_stopping.metric" in problem and "log_loss" in problem
    problem = config_problem(["model.name=dlrmm"])
    assert problem is not None and "model.name" in problem and "[dlrm, dcn, mf, fm, lr]" in problem
    problem = config_problem(["trainer.resume=latest", "trainer.warm_start=latest"])
    assert problem is not None and "trainer.warm_start" in problem
    # A sweep starts no single run: each job's run(cfg) validates its own config.
    assert config_problem(["--multirun", "trainer.epochs=0,1"]) is None


def test_config_problem_uses_the_config_dir(tmp_path: Path) -> None:
    from recsys.compose import conf_dir

    (tmp_path / "data").mkdir()
    mine = (Path(conf_dir()) / "data" / "movielens.yaml").read_text()
    (tmp_path / "data" / "mine.yaml").write_text(mine.replace("name: movielens", "name: mine"))
    assert config_problem(["-cd", str(tmp_path), "data=mine"]) is None
    problem = config_problem(["-cd", str(tmp_path), "data=mine", "data.format=parq"])
    assert problem is not None and "data.format" in problem and "parquet" in problem
    problem = config_problem(["data=mine"])  # without the folder the option does not exist
    assert problem is not None and "data/mine" in problem and "movielens" in problem
    problem = config_problem(["-cd", str(tmp_path / "nowhere")])
    assert problem is not None and "--config-dir" in problem
    problem = config_problem(["-cd", str(tmp_path), "+experiment=best"])  # no experiment/ there
    assert problem is not None and "experiment/best.yaml" in problem
