"""Writing the serving export from a trained model's full (unsharded) state."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys import __version__
from recsys.config import Schema
from recsys.export.manifest import (
    FORMAT,
    FORMAT_VERSION,
    HASH_RULE,
    MANIFEST_FILE,
    lookup_entries,
    sha256_file,
)
from recsys.model.registry import AnyHeadConfig

log = logging.getLogger(__name__)

# Where the model's modules keep their weights in its state dict.
TABLE_KEY = "sparse_arch.embedding_bags.embedding_bags.{}.weight"
FIRST_ORDER_KEY = "sparse_arch.first_order_bags.embedding_bags.{}__first_order.weight"
HEAD_PREFIX = "head."


def write_export(
    export_dir: Path,
    schema: Schema,
    head_config: AnyHeadConfig,
    state: dict[str, torch.Tensor],
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write tables, dense part and manifest; the folder appears whole or not at all.

    Args:
        export_dir: destination; replaced if it exists.
        schema: the feature schema the model was trained with.
        head_config: the head (dense part): its architecture and shapes.
        state: the model's full state dict (keys as in `recsys.model.click.ClickModel`).
        provenance: where the model came from (MLflow run id, eval metrics), kept as is.
    """
    export_dir = Path(export_dir)
    staging = export_dir.with_name(export_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "tables").mkdir(parents=True)
    tables = {
        t.name: _write_table(staging, t.name, state, head_config.first_order) for t in schema.tables
    }
    torch.save(
        {k[len(HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)},
        staging / "dense.pt",
    )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "recsys_version": __version__,
        "created_unix": int(time.time()),
        "hashing": HASH_RULE,
        "lookups": lookup_entries(schema),
        "schema": schema.to_dict(),
        "schema_fingerprint": schema.fingerprint(),
        "provenance": provenance or {},
        "tables": tables,
        "dense": {
            "file": "dense.pt",
            "sha256": sha256_file(staging / "dense.pt"),
            "architecture": head_config.architecture,
            "head_config": head_config.to_dict(),
        },
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(export_dir, ignore_errors=True)
    staging.rename(export_dir)
    log.info("export written to %s (%d tables)", export_dir, len(tables))
    return export_dir


def _write_table(root: Path, name: str, state: dict[str, torch.Tensor], first_order: bool) -> dict:
    weight = state[model_key(TABLE_KEY, name)].float().numpy()
    entry = {
        "file": f"tables/{name}.npy",
        "num_buckets": int(weight.shape[0]),
        "dim": int(weight.shape[1]),
        **_save(root, f"tables/{name}.npy", weight),
        "first_order": None,
    }
    if first_order:
        # Serving needs only the bias itself: sum the kernel-alignment columns away.
        bias = state[model_key(FIRST_ORDER_KEY, name)].float().sum(dim=1, keepdim=True).numpy()
        entry["first_order"] = {
            "file": f"tables/{name}__first_order.npy",
            **_save(root, f"tables/{name}__first_order.npy", bias),
        }
    return entry


def _save(root: Path, relative: str, array: np.ndarray) -> dict:
    np.save(root / relative, np.ascontiguousarray(array, dtype=np.float32))
    return {"sha256": sha256_file(root / relative)}


def model_key(template: str, table: str) -> str:
    return template.format(table)
