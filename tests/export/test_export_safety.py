"""An export is read, never unpickled: tables with allow_pickle=False, the dense part with
weights_only=True; a tampered file, a manifest of a newer format and a file outside the folder
are errors that name the file and say what to do, in the scorer, `recsys-score` and warm start.

The export is a real one (`write_export`) of an untrained model built from the tiny log's
schema: safety does not depend on what the weights learned.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recsys.cli.score import main as score_main
from recsys.compose import load_config
from recsys.data.source import SourceFormat
from recsys.distributed.env import DistEnv
from recsys.export.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    ExportError,
    Manifest,
    sha256_file,
)
from recsys.export.scorer import Scorer
from recsys.export.writer import write_export
from recsys.model.layout import ModelWeights, WeightLayout
from recsys.model.registry import build_head, head_config
from recsys.schema import resolve_schema
from recsys.train.warm_start import warm_start


@pytest.fixture
def export(tiny_log, tmp_path: Path) -> Path:
    cfg = load_config(tiny_log.overrides + ["tracking=none"])
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    config = head_config(schema, cfg.model)
    tables = {t.name: torch.randn(t.num_buckets, t.embedding_dim) for t in schema.tables}
    weights = ModelWeights(
        tables=tables,
        first_order={n: torch.randn(w.shape[0], 1) for n, w in tables.items()},
        dense=build_head(config).state_dict(),
    )
    source = SourceFormat.from_config(cfg.data)
    return write_export(tmp_path / "export", schema, config, weights, source=source)


def _manifest(export: Path) -> dict:
    return json.loads((export / MANIFEST_FILE).read_text())


def _rewrite(export: Path, manifest: dict) -> None:
    (export / MANIFEST_FILE).write_text(json.dumps(manifest))


def _first_table(export: Path) -> tuple[str, Path]:
    name, entry = next(iter(_manifest(export)["tables"].items()))
    return name, export / entry["file"]


def _cli_error(export: Path, tiny_log, tmp_path: Path, capsys) -> str:
    code = score_main([str(export), str(tiny_log.eval), str(tmp_path / "scores.parquet")])
    assert code == 2
    return capsys.readouterr().err


def test_an_untouched_export_loads_and_scores(export: Path, tiny_log, tmp_path, capsys) -> None:
    assert score_main([str(export), str(tiny_log.eval), str(tmp_path / "s.parquet")]) == 0
    assert "scored" in capsys.readouterr().out


def test_a_tampered_table_names_the_file(export: Path, tiny_log, tmp_path, capsys) -> None:
    _, table_file = _first_table(export)
    table = np.load(table_file)
    table[3, 0] += 1.0  # one weight: the kind of edit no shape check would see
    np.save(table_file, table)
    with pytest.raises(ExportError, match=f"{re.escape(str(table_file))}: checksum mismatch"):
        Scorer(export)
    error = _cli_error(export, tiny_log, tmp_path, capsys)
    assert str(table_file) in error and "Copy the export again" in error


def test_warm_start_from_a_tampered_export_names_the_file(export: Path) -> None:
    _, table_file = _first_table(export)
    np.save(table_file, np.load(table_file) * 2)
    schema = Manifest.load(export).schema
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(ExportError, match=f"{re.escape(str(table_file))}: checksum mismatch"):
        warm_start(export, nn.Linear(1, 1), WeightLayout(tables={}), schema, env, False)


def test_a_newer_manifest_format_says_upgrade(export: Path, tiny_log, tmp_path, capsys) -> None:
    _rewrite(export, {**_manifest(export), "format_version": FORMAT_VERSION + 1})
    manifest_file = re.escape(str(export / MANIFEST_FILE))
    with pytest.raises(ExportError, match=f"{manifest_file}: export format v.* is newer"):
        Scorer(export)
    error = _cli_error(export, tiny_log, tmp_path, capsys)
    assert str(export / MANIFEST_FILE) in error and "upgrade recsys" in error


def test_a_corrupted_manifest_names_it(export: Path) -> None:
    (export / MANIFEST_FILE).write_text('{"format": "recsys-serving-export", ')
    with pytest.raises(ExportError, match=f"{re.escape(str(export / MANIFEST_FILE))} is not valid"):
        Scorer(export)


def test_a_file_outside_the_export_is_refused(export: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.npy"
    name, table_file = _first_table(export)
    np.save(outside, np.load(table_file))
    manifest = _manifest(export)
    manifest["tables"][name] |= {"file": "../elsewhere.npy", "sha256": sha256_file(outside)}
    _rewrite(export, manifest)
    with pytest.raises(ExportError, match="'../elsewhere.npy' lies outside the export folder"):
        Scorer(export)


class _Payload:
    """Unpickling it creates `marker`: code from the file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _replace_with_checksum(export: Path, entry: dict, write) -> Path:
    """An attacker who edits a file and its checksum both: only safe loading stops that."""
    path = export / entry["file"]
    write(path)
    entry["sha256"] = sha256_file(path)
    return path


def test_a_pickled_table_or_dense_part_is_refused_not_run(export: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    manifest = _manifest(export)
    dense = _replace_with_checksum(
        export, manifest["dense"], lambda p: torch.save({"w": _Payload(marker)}, p)
    )
    _rewrite(export, manifest)
    with pytest.raises(ExportError, match=f"{re.escape(str(dense))} holds something other"):
        Scorer(export)
    assert not marker.exists()

    name = next(iter(manifest["tables"]))
    payload = np.array([_Payload(marker)], dtype=object)
    table = _replace_with_checksum(
        export, manifest["tables"][name], lambda p: np.save(p, payload, allow_pickle=True)
    )
    _rewrite(export, manifest)
    with pytest.raises(ExportError, match=f"{re.escape(str(table))} is not a plain numeric"):
        Scorer(export)
    assert not marker.exists()

    np.load(table, allow_pickle=True)  # the payload is live: an unsafe load runs it
    assert marker.exists()
