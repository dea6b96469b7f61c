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
from recsys.data.source import SourceFormat
from recsys.export.manifest import (
    FORMAT,
    FORMAT_VERSION,
    HASH_RULE,
    MANIFEST_FILE,
    lookup_entries,
    sha256_file,
    source_entry,
)
from recsys.model.layout import ModelWeights
from recsys.model.registry import AnyHeadConfig
from recsys.schema import Schema

log = logging.getLogger(__name__)


def write_export(
    export_dir: Path,
    schema: Schema,
    head_config: AnyHeadConfig,
    weights: ModelWeights,
    provenance: dict[str, Any] | None = None,
    source: SourceFormat | None = None,
) -> Path:
    """Write tables, dense part and manifest; the folder appears whole or not at all.

    Args:
        export_dir: destination; replaced if it exists.
        schema: the feature schema the model was trained with.
        head_config: the head (dense part): its architecture and shapes.
        weights: the model's full (unsharded) weights by role (`WeightLayout.split`).
        provenance: where the model came from (MLflow run id, eval metrics), kept as is.
        source: how the training records were laid out (data.format, header, columns); the
            scorer reads raw records the same way. None: not recorded (the scorer then falls
            back to its rule for old exports).
    """
    export_dir = Path(export_dir)
    staging = export_dir.with_name(export_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "tables").mkdir(parents=True)
    tables = {
        t.name: _write_table(staging, t.name, weights, head_config.first_order)
        for t in schema.tables
    }
    torch.save(weights.dense, staging / "dense.pt")
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
        "source": None if source is None else source_entry(source),
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


def _write_table(root: Path, name: str, weights: ModelWeights, first_order: bool) -> dict:
    weight = weights.tables[name].float().numpy()
    entry = {
        "file": f"tables/{name}.npy",
        "num_buckets": int(weight.shape[0]),
        "dim": int(weight.shape[1]),
        **_save(root, f"tables/{name}.npy", weight),
        "first_order": None,
    }
    if first_order:
        # Serving needs only the bias itself: sum the kernel-alignment columns away.
        bias = weights.first_order[name].float().sum(dim=1, keepdim=True).numpy()
        entry["first_order"] = {
            "file": f"tables/{name}__first_order.npy",
            **_save(root, f"tables/{name}__first_order.npy", bias),
        }
    return entry


def _save(root: Path, relative: str, array: np.ndarray) -> dict:
    np.save(root / relative, np.ascontiguousarray(array, dtype=np.float32))
    return {"sha256": sha256_file(root / relative)}
