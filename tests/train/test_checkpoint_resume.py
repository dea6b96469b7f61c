"""Resume and warm start through the real recipe: in-process runs, then torchrun + SIGKILL."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys.compose import load_config
from recsys.export.manifest import Manifest, load_dense
from recsys.export.scorer import Scorer
from recsys.train import recipe
from recsys.train.checkpoint import save_checkpoint
from recsys.train.checkpoint_layout import CheckpointError, find_latest, read_meta
from recsys.train.recipe import TrainResult, run
from tests.synthetic import TinyLog

REPO = Path(__file__).resolve().parents[2]
# Same batches after a resume need the loader in file order (no shuffle) and fixed kernels.
DETERMINISTIC = [
    "tracking=none",
    "trainer.deterministic=true",
    "trainer.shuffle_buffer=0",
    "trainer.shuffle_files=false",
    "trainer.epochs=2",
]
TOL = 1e-6
ROWS = 2850  # trained per epoch: the tiny log's 3000 rows less the last 5% held out (data.holdout)


def _run(log: TinyLog, out: Path, extra: list[str]) -> TrainResult:
    return run(load_config(log.overrides + DETERMINISTIC + extra, output_dir=str(out)))


def _probs(run_dir: Path) -> np.ndarray:
    return pq.read_table(run_dir / "eval_predictions.parquet")["prob"].to_numpy()


def _progress(checkpoint: Path) -> dict | None:
    """The merged EpochProgress state a checkpoint holds (None at an epoch's start)."""
    return torch.load(checkpoint / "trainer_state.pt", weights_only=False)["progress"]


def _trained_rows_before(checkpoint: Path, rows_per_epoch: int) -> int:
    progress = _progress(checkpoint)
    return read_meta(checkpoint)["epoch"] * rows_per_epoch + (progress["rows"] if progress else 0)


def test_resume_from_mid_epoch_checkpoint_ends_like_the_uninterrupted_run(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    saving = ["trainer.checkpoint.every_n_steps=7", "trainer.checkpoint.keep_last=100"]
    full = _run(tiny_log, tmp_path / "full", saving)
    checkpoints = sorted((tmp_path / "full" / "checkpoints").iterdir(), key=os.path.getmtime)
    # One in the second epoch, mid-way: the model, optimizers, step and position all matter.
    mid = next(c for c in checkpoints if read_meta(c)["epoch"] == 1 and _progress(c) is not None)
    assert 0 < _progress(mid)["rows"] < ROWS

    # Tracked this time: the MLflow run says where it was resumed from.
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    tracked = [o for o in tiny_log.overrides + DETERMINISTIC if o != "tracking=none"]
    cfg = load_config(
        tracked + saving + [f"trainer.resume={mid}", f"tracking.uri={uri}"],
        output_dir=str(tmp_path / "resumed"),
    )
    resumed = run(cfg)
    assert MlflowClient(uri).get_run(resumed.run_id).data.tags["resumed_from"] == str(mid)
    for key in ("eval/auc", "eval/log_loss", "eval/ne", "eval/calibration"):
        assert abs(resumed.metrics[key] - full.metrics[key]) <= TOL, key
    np.testing.assert_allclose(_probs(tmp_path / "resumed"), _probs(tmp_path / "full"), atol=TOL)
    assert resumed.steps == full.steps
    # Every row not trained before the checkpoint, trained once after it.
    assert resumed.samples == 2 * ROWS - _trained_rows_before(mid, ROWS)
    assert (tmp_path / "resumed" / "checkpoints").is_dir()  # its own output folder
    assert not any((tmp_path / "full").glob("checkpoints/*.tmp"))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyLog, Path]:
    """One trained epoch: an export and an epoch-end checkpoint to warm start from."""
    from tests.synthetic import write_tiny_log

    root = tmp_path_factory.mktemp("warm")
    log = write_tiny_log(root)
    _run(log, root / "source", ["trainer.epochs=1"])
    return log, root / "source"


def test_resumed_past_the_best_step_stops_and_restores_like_the_uninterrupted_run(
    tiny_log: TinyLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Early stopping's judgement travels in checkpoints. Resumed after the best step (whose
    checkpoint the finished run has moved to its checkpoints/), the run stops at the same step
    and ends with the same restored model."""
    snapshots = tmp_path / "snapshots"  # the run deletes checkpoints past the best at its end

    def save_and_copy(**where) -> Path:
        written = save_checkpoint(**where)
        if written.parent.name == "checkpoints":
            shutil.copytree(written, snapshots / written.name)
        return written

    monkeypatch.setattr(recipe, "save_checkpoint", save_and_copy)
    bold = [
        "trainer.epochs=20",
        "trainer.sparse_lr=0.5",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.restore_best=true",
    ]
    bold += ["data.holdout.fraction=0.2", "trainer.checkpoint.every_n_steps=7"]
    full = _run(tiny_log, tmp_path / "full", bold)
    best = int(full.stop_reason.split("restored the model of step ")[1].split(" ")[0])
    past = sorted(int(p.name[len("step_") :]) for p in snapshots.iterdir())
    step = next(s for s in past if best < s < full.steps)
    assert not (tmp_path / "full" / "checkpoints" / f"step_{step}").exists()
    monkeypatch.undo()
    resumed = _run(
        tiny_log, tmp_path / "resumed", [*bold, f"trainer.resume={snapshots}/step_{step}"]
    )
    assert (resumed.steps, resumed.stop_reason) == (full.steps, full.stop_reason)
    np.testing.assert_allclose(_probs(tmp_path / "resumed"), _probs(tmp_path / "full"), atol=TOL)
    assert (tmp_path / "resumed" / "checkpoints" / f"step_{best}").is_dir()  # copied over


def test_resume_with_other_validation_rows_is_refused(tiny_log: TinyLog, tmp_path: Path) -> None:
    """Other held-out rows would validate on rows trained on before, or train on held ones."""
    _run(tiny_log, tmp_path / "first", ["trainer.max_steps=3", "export.enabled=false"])
    step = tmp_path / "first" / "checkpoints" / "step_3"
    with pytest.raises(CheckpointError, match=r"data\.holdout"):
        _run(tiny_log, tmp_path / "again", [f"trainer.resume={step}", "data.holdout.fraction=0.1"])


@pytest.mark.parametrize("what", ["export", "checkpoint"])
def test_warm_start_predicts_like_its_source_before_any_step(
    source_run: tuple[TinyLog, Path], tmp_path: Path, what: str
) -> None:
    log, source = source_run
    path = source / "export" if what == "export" else find_latest(source)
    # max_steps=0: build, warm start, evaluate, no training step.
    result = _run(log, tmp_path / "warm", ["trainer.max_steps=0", f"trainer.warm_start={path}"])
    assert result.steps == 0
    expected = Scorer(source / "export").score(pq.read_table(log.eval))
    np.testing.assert_allclose(_probs(tmp_path / "warm"), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("into_rows", [True, False])
def test_biases_in_rows_export_score_and_warm_start_either_layout(
    tiny_log: TinyLog, tmp_path: Path, into_rows: bool
) -> None:
    # model.bias_in_rows: the export cuts each row into embedding and bias (their mean); the
    # scorer reproduces the model, and a warm start puts them back, in rows or bias tables.
    source = _run(tiny_log, tmp_path / "rows", ["model.bias_in_rows=true", "trainer.epochs=1"])
    expected = Scorer(source.export_dir).score(pq.read_table(tiny_log.eval))
    np.testing.assert_allclose(expected, _probs(tmp_path / "rows"), rtol=0, atol=1e-5)
    biases = np.load(source.export_dir / "tables" / "item_id__first_order.npy")
    assert biases.shape[1] == 1 and np.abs(biases).max() > 0  # trained, cut from the rows
    warm = [
        "trainer.max_steps=0",
        f"trainer.warm_start={source.export_dir}",
        f"model.bias_in_rows={str(into_rows).lower()}",
    ]
    _run(tiny_log, tmp_path / "warm", warm)
    np.testing.assert_allclose(_probs(tmp_path / "warm"), expected, rtol=0, atol=1e-5)


def test_warm_start_with_a_resized_table_names_it(
    source_run: tuple[TinyLog, Path], tmp_path: Path
) -> None:
    log, source = source_run
    resized = ["trainer.max_steps=0", f"trainer.warm_start={source / 'export'}"]
    resized.append("data.tables.item_id.num_buckets=1024")
    with pytest.raises(CheckpointError, match=r"table 'item_id' is \[num_buckets, dim\]"):
        _run(log, tmp_path / "error", resized)
    # Under the flag the resized table starts fresh and the rest is copied.
    result = _run(log, tmp_path / "skip", resized + ["trainer.warm_start_skip_mismatched=true"])
    tables, source_tables = result.export_dir / "tables", source / "export" / "tables"
    assert np.load(tables / "item_id.npy").shape[0] == 1024
    np.testing.assert_array_equal(
        np.load(tables / "user_id.npy"), np.load(source_tables / "user_id.npy")
    )


# ----------------------------------------------------------------- torchrun: 2 processes


def _torchrun(nproc: int, out: Path, overrides: list[str]) -> subprocess.Popen:
    cmd = ["make", "-s", "-C", str(REPO), "train", f"NPROC={nproc}", f"RUN_DIR={out}"]
    cmd.append(f"ARGS={' '.join(overrides)}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own session, so a kill reaches nothing outside this run.
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    return out


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants (Linux /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a process that just ended
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _kill_once_checkpointed(proc: subprocess.Popen, run_dir: Path, deadline_s: float) -> None:
    """SIGKILL make, torchrun and every worker as soon as a complete checkpoint exists.

    torchrun starts each worker in a session of its own, so killing the launcher's process
    group alone would leave the workers training: every process of the tree gets SIGKILL.
    """
    end = time.monotonic() + deadline_s
    while find_latest(run_dir) is None:
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.05)  # polling, not a guess at how long anything takes
    for pid in _process_tree(proc.pid):
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.distributed
@pytest.mark.slow
def test_sigkilled_two_process_run_resumes_to_the_same_metrics(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    common = tiny_log.overrides + DETERMINISTIC
    common += [
        "trainer.batch_size=64",  # 25 steps per epoch on 2 ranks: the kill lands mid-run
        "trainer.checkpoint.every_n_steps=4",
        "trainer.checkpoint.at_epoch_end=false",
        "data.tables.user_id.num_buckets=65536",  # table-wise shards on both ranks
        "export.enabled=false",
    ]
    killed = _torchrun(2, tmp_path / "killed", common)
    _kill_once_checkpointed(killed, tmp_path / "killed", deadline_s=300)
    assert not (tmp_path / "killed" / "eval_predictions.parquet").exists()
    latest = find_latest(tmp_path / "killed")
    state = torch.load(latest / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2 and state["progress"] is not None  # mid-epoch

    search = f"trainer.checkpoint.search_dir={tmp_path / 'killed'}"
    _finish(_torchrun(2, tmp_path / "resumed", common + ["trainer.resume=latest", search]))
    assert f"resumed from {latest}" in (tmp_path / "resumed" / "train.log").read_text()
    _finish(_torchrun(2, tmp_path / "full", common))
    np.testing.assert_allclose(
        _probs(tmp_path / "resumed"), _probs(tmp_path / "full"), rtol=0, atol=TOL
    )

    # The same checkpoint on one process: DCP reshards the tables, the rest of the data is
    # read exactly once (the run's sample count is what was left).
    one = run(load_config(common + [f"trainer.resume={latest}"], output_dir=str(tmp_path / "one")))
    assert one.samples == 2 * ROWS - _trained_rows_before(latest, ROWS)
    assert one.metrics["eval/auc"] > 0.6


@pytest.mark.slow  # ~13 s; one-process warm starts and two-process training stay fast
@pytest.mark.distributed
def test_warm_start_on_two_processes_with_table_wise_shards(
    source_run: tuple[TinyLog, Path], tmp_path: Path
) -> None:
    log, source = source_run
    overrides = log.overrides + DETERMINISTIC
    overrides += [
        "sharding=table_wise",
        "trainer.max_steps=0",
        f"trainer.warm_start={source / 'export'}",
        "export.enabled=false",
    ]
    out = _finish(_torchrun(2, tmp_path / "warm", overrides))
    plan = (tmp_path / "warm" / "sharding_plan.txt").read_text()
    assert "rank:1/cpu" in plan, plan  # some tables live on the second rank
    expected = Scorer(source / "export").score(pq.read_table(log.eval))
    np.testing.assert_allclose(_probs(tmp_path / "warm"), expected, rtol=0, atol=1e-5)
    assert "eval AUC" in out


@pytest.mark.parametrize("what", ["export", "checkpoint"])
def test_warm_start_from_another_head_copies_the_dense_first_order_term(
    tiny_log: TinyLog, tmp_path: Path, what: str
) -> None:
    """An LR's linear term of the dense features (and its bias) means the same in DLRM: it is
    copied although the rest of the dense part (another head) starts fresh."""
    lr = _run(tiny_log, tmp_path / "lr", ["model=lr", "model.embedding_dim=16", "trainer.epochs=1"])
    source = lr.export_dir if what == "export" else find_latest(tmp_path / "lr")
    warm = _run(
        tiny_log, tmp_path / "dlrm", ["trainer.max_steps=0", f"trainer.warm_start={source}"]
    )
    trained, started = (
        load_dense(d / Manifest.load(d).dense["file"]) for d in (lr.export_dir, warm.export_dir)
    )
    assert set(trained) == {"dense_linear.weight", "dense_linear.bias"} < set(started)
    for key, value in trained.items():
        assert value.abs().max() > 0
        torch.testing.assert_close(started[key], value, rtol=0, atol=0)
