"""A non-editable `pip install .` trains from any folder, with a data config kept outside the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.synthetic import make_click_log

REPO = Path(__file__).resolve().parents[2]
# Top-level folders that are not sources (fetched data, run outputs, caches, the venv).
NOT_SOURCES = {".git", ".venv", "data", "outputs", "multirun", "mlruns", "build"}
NOT_SOURCES |= {".pytest_cache", ".ruff_cache", "recsys.egg-info"}


def _not_sources(folder: str, names: list[str]) -> set[str]:
    top = Path(folder).resolve() == REPO
    return {n for n in names if (top and n in NOT_SOURCES) or n == "__pycache__"}


MY_DATA = """\
# mylog.yaml: the user's own data config, outside the repo
name: mylog
train_path: {train}
eval_path: {eval}
label: {{column: label}}
features:
  user: {{kind: id, column: user_id, seed: 1}}
  item: {{kind: id, column: item_id, seed: 2}}
  genres: {{kind: id_list, seed: 3}}
tables:
  user: {{num_buckets: 512}}
  item: {{num_buckets: 512}}
  genres: {{num_buckets: 64, pooling: mean}}
"""


def _find_links() -> list[str]:
    """pip's configured find-links (where a local CPU build of torch lies), for uv."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("global.find-links="):
            return ["--find-links", line.split("=", 1)[1].strip("'\"")]
    return []


@pytest.mark.slow
def test_installed_package_trains_on_a_data_config_outside_the_repo(tmp_path: Path) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is not in the venv (make setup installs it)")
    venv, source = tmp_path / "venv", tmp_path / "source"
    # A copy of the sources: building a wheel writes build/ and *.egg-info beside them.
    shutil.copytree(REPO, source, symlinks=True, ignore=_not_sources)
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    # Not editable: the package is copied into site-packages, conf/ must travel inside it.
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(source)]
        + _find_links(),
        check=True,
        timeout=600,
    )
    work, conf = tmp_path / "elsewhere", tmp_path / "myconf"
    (conf / "data").mkdir(parents=True)
    work.mkdir()
    train, evaluation = tmp_path / "train.parquet", tmp_path / "eval.parquet"
    pq.write_table(make_click_log(1500, seed=1), train)
    pq.write_table(make_click_log(500, seed=2), evaluation)
    (conf / "data" / "mylog.yaml").write_text(MY_DATA.format(train=train, eval=evaluation))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(venv / "bin" / "recsys-train"), "--config-dir", str(conf), "data=mylog"]
        + ["trainer.epochs=1", "trainer.progress_bar=false", "tracking=none"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval AUC" in proc.stdout
    exports = list((work / "outputs").glob("*/*/export/manifest.json"))
    assert len(exports) == 1
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import recsys; print(recsys.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert str(REPO) not in installed and str(source) not in installed  # the installed copy
