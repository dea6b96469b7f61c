"""Whether a checkpoint may be loaded, decided before any of it is: its format version, the
feature schema it was trained with, and reads of its two pickled files (`trainer_state.pt`,
DCP's `.metadata`) that refuse anything but plain values, tensors and DCP's own classes.

Resume, the best step's reload (recsys.train.checkpoint) and warm start
(recsys.train.warm_start) all go through these, so every refusal says the same thing, and
says what to do instead.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata

from recsys.schema import Schema, schema_differences
from recsys.train import safe_dcp
from recsys.train.checkpoint_layout import FORMAT_VERSION, META_FILE, STATE_FILE, CheckpointError


def check_format_version(meta: dict[str, Any], path: Path) -> None:
    """Resume only from checkpoints this recsys writes; say what to do with any other."""
    version = meta.get("format_version")
    if version == FORMAT_VERSION:
        return
    where = Path(path) / META_FILE
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: checkpoint format v{version} is newer than this recsys reads "
            f"(v{FORMAT_VERSION}). Upgrade recsys to the version that wrote it to resume."
        )
    raise CheckpointError(
        f"{where}: checkpoint format v{version} is older than this recsys reads "
        f"(v{FORMAT_VERSION}; v1 kept trainer state as pickled objects, which are never loaded "
        f"now). Resume it with the recsys that wrote it, or start a new run with "
        f"trainer.warm_start={path} to reuse its weights (warm start reads only tensors)."
    )


def check_schema(saved: dict[str, Any], schema: Schema, where: Path) -> None:
    """A checkpoint fits only the schema it was trained with; say which data.* keys differ."""
    if Schema.from_dict(saved).fingerprint() == schema.fingerprint():
        return
    differences = schema_differences(saved, schema.to_dict())
    raise CheckpointError(
        f"{where} was written for another feature schema; differing settings: "
        f"{'; '.join(differences)}. Use the data config the checkpoint was trained with, or "
        f"start a new run with trainer.warm_start={where} to reuse matching tables."
    )


def read_trainer_state(path: Path) -> dict[str, Any]:
    """`trainer_state.pt` with `weights_only=True`: tensors and plain values only, so a file
    that smuggles in a pickled object is refused before any of its code runs."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{file} not found: the checkpoint is incomplete; resume from "
            f"another one (trainer.resume=<step folder>)."
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{file} holds something other than tensors and plain values and was not loaded "
            f"(nothing in it ran{_refused_global(e)}). recsys never writes that: the file was "
            f"replaced or edited. Resume from a checkpoint you trust."
        ) from e
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(
            f"{file} cannot be read ({e}): the file is truncated or corrupted. Resume from "
            f"another checkpoint (trainer.resume=<step folder>)."
        ) from e


def read_dcp_metadata(path: Path) -> Metadata:
    """DCP's `.metadata` (a pickle) through an unpickler that builds only DCP's own classes."""
    try:
        return safe_dcp.read_metadata(path)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{e}. The checkpoint was not loaded (nothing in it ran): it was replaced or "
            f"edited; resume or warm-start from a checkpoint you trust."
        ) from e


def _refused_global(error: Exception) -> str:
    """torch's message names the refused type on one line, amid advice to load unsafely."""
    lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
    return f"; {lines[0]}" if lines else ""
