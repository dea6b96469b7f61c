"""Criteo lines whose trailing empty fields were stripped: read as missing, counted, not bad."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from recsys.compose import load_config
from recsys.config import OnBadRow
from recsys.data.featurize import DataError
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.progress import EpochProgress
from recsys.data.source import SourceFormat
from recsys.data.text_lines import PaddedLines
from recsys.schema import resolve_schema


def _line(label: int, ids: int = 26, extra: int = 0) -> str:
    """A Criteo line with its first `ids` C fields (the rest stripped) and `extra` too many."""
    dense = [str(i) for i in range(13)]
    cats = [f"{label:02x}{i:06x}" for i in range(ids)]
    return "\t".join([str(label), *dense, *cats, *["x"] * extra])


@pytest.mark.parametrize("block", [7, 64, 1 << 20])  # lines cut across reads, or not
def test_padded_lines_add_the_missing_fields(block: int) -> None:
    text = (
        "a\tb\tc\n"  # complete
        "a\tb\r\n"  # one short, CRLF kept
        "\n"  # blank: stays blank
        "a\n"  # two short
        "a\tb\tc\td\n"  # too many: left for the parser to reject
        "a"  # no final line break, two short
    )
    stream = PaddedLines(io.BytesIO(text.encode()), b"\t", 3, block=block)
    out = b"".join(iter(lambda: stream.read(5), b"")).decode()
    assert out == "a\tb\tc\na\tb\t\r\n\na\t\t\na\tb\tc\td\na\t\t"
    assert stream.padded == 3 and stream.example == "a\tb"


@pytest.fixture
def criteo():
    cfg = load_config(["data=criteo"]).data
    return cfg, resolve_schema(cfg, 16)


def _dataset(path: Path, criteo, mode=OnBadRow.fail, unit_bytes=1 << 20) -> StreamingDataset:
    cfg, schema = criteo
    source = SourceFormat.from_config(cfg)
    source = SourceFormat(source.format, on_bad_row=mode, unit_bytes=unit_bytes)
    return StreamingDataset(str(path), schema, LoaderOptions(batch_size=16, source=source))


def test_short_rows_read_as_missing_and_counted(tmp_path: Path, criteo) -> None:
    lines = [_line(i % 2, ids=26 if i % 3 else 20 + i % 5) for i in range(60)]  # 20 short
    (tmp_path / "day_0.tsv").write_text("\n".join(lines[:40]) + "\n")
    with gzip.open(tmp_path / "day_1.tsv.gz", "wt") as f:  # compressed: one unit
        f.write("\n".join(lines[40:]))  # and no final line break
    dataset = _dataset(tmp_path, criteo, unit_bytes=1500)
    assert len(dataset.units) > 3  # the plain file is cut into several byte ranges
    progress = EpochProgress()
    batches = list(dataset)
    for batch in batches:
        progress.record(batch)
    assert progress.rows == 60 and progress.rows_padded == 20 and progress.bad_rows == {}
    # one C26 id per row (padding rows too): a stripped C26 is a missing id, bucket 0
    ids = np.concatenate([b.sparse["C26"].values()[b.real_rows].numpy() for b in batches])
    assert len(ids) == 60 and (ids == 0).sum() == 20
    merged = EpochProgress.merge([progress, EpochProgress()])
    assert merged.rows_padded == 20
    assert EpochProgress.from_state_dict(merged.state_dict()).rows_padded == 20


def test_too_many_fields_stay_bad(tmp_path: Path, criteo) -> None:
    lines = [_line(1), _line(0, ids=10), _line(1, extra=2), _line(0)]
    (tmp_path / "day_0.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"day_0\.tsv, line 3, .*has 42 columns, expected 40"):
        list(_dataset(tmp_path, criteo))
    progress = EpochProgress()
    for batch in _dataset(tmp_path, criteo, OnBadRow.skip):
        progress.record(batch)
    assert progress.rows == 3 and progress.rows_padded == 1
    assert progress.bad_rows == {"wrong_column_count": 1}


def test_a_resumed_epoch_counts_padded_rows_once(tmp_path: Path, criteo) -> None:
    lines = [_line(i % 2, ids=26 if i % 4 else 25) for i in range(200)]  # 50 short
    (tmp_path / "day_0.tsv").write_text("\n".join(lines) + "\n")
    whole = EpochProgress()
    for batch in _dataset(tmp_path, criteo, unit_bytes=4000):
        whole.record(batch)
    partial = EpochProgress()
    for batch in list(_dataset(tmp_path, criteo, unit_bytes=4000))[:3]:
        partial.record(batch)
    resumed = _dataset(tmp_path, criteo, unit_bytes=4000)
    resumed.set_epoch(0, resume=partial)
    for batch in resumed:
        partial.record(batch)
    assert whole.rows_padded == 50 and partial.rows_padded == 50 and partial.rows == 200


@pytest.mark.slow
def test_the_run_reports_rows_padded(tmp_path: Path) -> None:
    from recsys.train.recipe import run

    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    (conf / "short.yaml").write_text(
        f"""name: short
format: criteo
columns: [label, I1, C1, C2]
train_path: {tmp_path}/train.tsv
eval_path: {tmp_path}/train.tsv
valid_path: {tmp_path}/train.tsv  # no validation rows held out of training
features:
  I1: {{kind: dense}}
  C1: {{kind: id, seed: 1}}
  C2: {{kind: id, seed: 2}}
tables:
  C1: {{num_buckets: 64}}
  C2: {{num_buckets: 64}}
"""
    )
    rows = [f"{i % 2}\t{i % 5}\tc{i % 7}" + (f"\td{i % 3}" if i % 4 else "") for i in range(400)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")  # 100 lines lack C2
    overrides = ["data=short", "tracking=none", "export.enabled=false", "trainer.epochs=2"]
    overrides += ["trainer.batch_size=64", "trainer.progress_bar=false"]
    cfg = load_config(overrides, output_dir=str(tmp_path / "run"), config_dir=str(conf.parent))
    per_epoch = [h for h in run(cfg).history if "data/rows_trained" in h]
    assert [h["data/rows_padded"] for h in per_epoch] == [100, 100]
    assert [h["data/rows_trained"] for h in per_epoch] == [400, 400]
    assert [h["data/bad_rows"] for h in per_epoch] == [0, 0]
