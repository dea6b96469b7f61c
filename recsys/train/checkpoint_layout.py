"""A checkpoint on disk: its folder layout and file names, and finding, resolving, pruning and
promoting step folders. Nothing here reads model state (recsys.train.checkpoint saves and
loads it; recsys.train.checkpoint_checks decides whether a checkpoint may be loaded), so a
caller that only needs to know where checkpoints are imports no DCP machinery.

Layout, under a run's output folder:

    checkpoints/step_<N>/
      .metadata, __<rank>_<i>.distcp   DCP: every rank writes its own table shards and
                                       optimizer state, in row chunks of bounded size
                                       (recsys.train.safe_dcp: a save costs a chunk of memory,
                                       not a copy of the tables); DCP reshards on load, so a
                                       checkpoint written by 2 processes resumes on 1 (or 8)
      trainer_state.pt                 step, epoch, the loader position of all ranks merged
                                       (EpochProgress.state_dict()), RNG states of every rank;
                                       plain Python values and tensors only, read back with
                                       torch.load(weights_only=True): never unpickled
      meta.json                        step, epoch, world size, time, schema + fingerprint, config

A step folder is complete once it carries that name and its meta.json: a `step_<N>.tmp/`
folder is a write still in progress or interrupted, and is never resumed from.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from recsys.config import ConfigError
from recsys.distributed.env import DistEnv

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step_"
TMP_SUFFIX = ".tmp"
META_FILE = "meta.json"
STATE_FILE = "trainer_state.pt"
# 2: trainer_state.pt holds only plain values and tensors (v1 pickled NumPy objects).
FORMAT_VERSION = 2


class CheckpointError(ConfigError):
    """A checkpoint cannot be used: missing, incomplete, or made for another schema."""


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META_FILE).read_text())


# ----------------------------------------------------------------------------------- finding


def _step_of(path: Path) -> int:
    return int(path.name[len(STEP_PREFIX) :])


def _complete_in(root: Path) -> list[Path]:
    """Finished checkpoints in one `checkpoints/` folder (renamed from .tmp, meta present)."""
    return [
        p
        for p in root.glob(f"{STEP_PREFIX}*")
        if p.is_dir() and p.name[len(STEP_PREFIX) :].isdigit() and (p / META_FILE).is_file()
    ]


def find_latest(search_dir: Path) -> Path | None:
    """The most recently written complete checkpoint anywhere under `search_dir` (all runs)."""
    candidates = [c for root in Path(search_dir).rglob(CHECKPOINTS_DIR) for c in _complete_in(root)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (read_meta(p)["created_unix"], _step_of(p)))


def resolve_checkpoint(spec: str, search_dir: Path) -> Path:
    """`latest`, a step folder, or a run folder (its newest checkpoint) -> a step folder."""
    if spec == "latest":
        found = find_latest(search_dir)
        if found is None:
            raise CheckpointError(
                f"trainer.resume=latest: no complete checkpoint under {Path(search_dir).resolve()}. "
                f"Train with trainer.checkpoint.every_n_steps=N (or at_epoch_end=true) first, or "
                f"point trainer.checkpoint.search_dir at the folder holding your runs."
            )
        return found
    path = Path(spec)
    if (path / META_FILE).is_file() and not path.name.endswith(TMP_SUFFIX):
        return path
    complete = _complete_in(path / CHECKPOINTS_DIR) if path.is_dir() else []
    if complete:
        return max(complete, key=_step_of)
    raise CheckpointError(
        f"trainer.resume={spec}: not a checkpoint folder (no {META_FILE}) nor a run folder with "
        f"complete checkpoints under {CHECKPOINTS_DIR}/. A '{TMP_SUFFIX}' folder is an "
        f"interrupted write and cannot be resumed from."
    )


# ------------------------------------------------------------------------ pruning, promoting


def prune_checkpoints(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints and any leftover `.tmp`."""
    removed = [p for p in root.glob(f"{STEP_PREFIX}*{TMP_SUFFIX}") if p.is_dir()]
    complete = sorted(_complete_in(root), key=_step_of)
    if keep_last > 0:
        removed += complete[:-keep_last]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def promote_checkpoint(source: Path, output_dir: Path, env: DistEnv) -> Path:
    """Make `source` (a complete checkpoint) the run's last one: checkpoints of later steps
    under `<output_dir>/checkpoints/` are deleted, and `source` moves there as `step_<N>/`
    (is copied, when it belongs to another run). A collective: all ranks call it."""
    root, step = Path(output_dir) / CHECKPOINTS_DIR, _step_of(Path(source))
    target = root / f"{STEP_PREFIX}{step}"
    if env.is_main:
        for later in [p for p in _complete_in(root) if _step_of(p) > step]:
            shutil.rmtree(later, ignore_errors=True)
        if not (target / META_FILE).is_file():
            root.mkdir(parents=True, exist_ok=True)
            if Path(source).resolve().is_relative_to(Path(output_dir).resolve()):
                Path(source).rename(target)
            else:
                shutil.copytree(source, target)
        log.info("the last checkpoint is now the best step's: %s", target)
    barrier(env)
    return target


def barrier(env: DistEnv) -> None:
    """All ranks wait here: one stage of folder work (rank 0 making, renaming or moving a step
    folder; every rank writing its shards) is done everywhere before any rank goes on. Saving
    and promoting both need it; a no-op in a world of one."""
    if env.world_size > 1:
        dist.barrier()
