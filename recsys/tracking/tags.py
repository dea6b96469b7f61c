"""Run tags that let a run be trusted later: code version, machine, packages, data.

Built from plain values (no recsys.train objects), so the recipe and tests can call them alike.
"""

from __future__ import annotations

import logging
import platform
import shutil
import socket
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys.tracking.tracker import Tracker

logger = logging.getLogger(__name__)

#: Distributions whose versions every run records; alternatives are tried in order.
PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchrec": ("torchrec",),
    "fbgemm_gpu": ("fbgemm-gpu", "fbgemm-gpu-cpu", "fbgemm-gpu-nightly"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "recsys": ("recsys",),
}
#: MLflow's own tag for the source commit (the run page shows it).
GIT_COMMIT_TAG = "mlflow.source.git.commit"
_GIT_TIMEOUT_S = 10


def run_tags(world_size: int, device: str, cwd: Path | None = None) -> dict[str, str]:
    """Tags for a training run: git commit and dirty flag, host, world size, device, versions.

    Args:
        world_size: number of training processes.
        device: the device type the run trains on ("cpu", "cuda").
        cwd: the folder whose git repository is recorded; the working directory by default.
            No git (or not a repository): no git tags, no error.
    """
    tags = {
        "host": socket.gethostname(),
        "world_size": str(world_size),
        "device": str(device),
        "version.python": platform.python_version(),
    }
    tags.update(git_tags(cwd or Path.cwd()))
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags


def git_tags(cwd: Path) -> dict[str, str]:
    """`mlflow.source.git.commit` and `git.dirty` of the repository holding `cwd`, else {}."""
    git = shutil.which("git")
    if git is None:
        return {}
    commit = _git(git, cwd, "rev-parse", "HEAD")
    if commit is None:
        return {}
    status = _git(git, cwd, "status", "--porcelain", "--untracked-files=no")
    tags = {GIT_COMMIT_TAG: commit}
    if status is not None:
        tags["git.dirty"] = str(bool(status)).lower()
    return tags


def _git(git: str, cwd: Path, *args: str) -> str | None:
    """Stripped stdout of `git args` in `cwd`; None when git fails (not a repository...)."""
    try:
        proc = subprocess.run(
            [git, *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError) as err:
        logger.debug("git %s failed in %s: %s", args, cwd, err)
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def package_versions() -> dict[str, str]:
    """Installed versions of `PACKAGES` (missing ones are left out)."""
    versions = {}
    for key, dists in PACKAGES.items():
        for dist in dists:
            try:
                versions[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def fingerprint_tags(context: str, fingerprint: Mapping[str, Any]) -> dict[str, str]:
    """Searchable tags from a `recsys.data.fingerprint.data_fingerprint` result.

    E.g. `data.train.digest`, `data.train.files`, `data.train.bytes`, `data.train.rows`
    ("unknown" when the row count was not cheap to get), `data.train.path`.
    """
    rows = fingerprint.get("rows")
    return {
        f"data.{context}.path": str(fingerprint["path"]),
        f"data.{context}.digest": str(fingerprint["digest"]),
        f"data.{context}.files": str(len(fingerprint["files"])),
        f"data.{context}.bytes": str(fingerprint["total_bytes"]),
        f"data.{context}.rows": "unknown" if rows is None else str(rows),
    }


def log_data_fingerprint(
    tracker: Tracker, context: str, name: str, fingerprint: Mapping[str, Any]
) -> None:
    """Record one dataset a run reads: its input (Datasets box), tags and full file list.

    Args:
        tracker: the run's tracker (a `NullTracker` does nothing).
        context: "train", "validation" or "eval".
        name: the dataset's name (the data config's name).
        fingerprint: a `recsys.data.fingerprint.data_fingerprint` result.
    """
    fp = fingerprint
    tracker.log_dataset(context, name, fp["path"], fp["digest"], fp["schema"], fp["rows"])
    tracker.set_tags(fingerprint_tags(context, fp))
    tracker.log_dict(dict(fp), f"data/{context}_fingerprint.json")
