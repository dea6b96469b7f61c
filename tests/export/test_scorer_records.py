"""How the scorer reads raw records: the training data's layout from the manifest, the loader's
read path, never the file name."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import DataConfig, DataFormat, FeatureKind, FeatureSpec, OnBadRow, TableSpec
from recsys.data.featurize import DataError, featurize
from recsys.data.source import SourceFormat
from recsys.data.text import CRITEO_COLUMNS, delimiter, fixed_columns
from recsys.export.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
    source_entry,
)
from recsys.export.scorer import read_records, records_format
from recsys.schema import Schema, resolve_schema

COLUMNS = ("label", "user", "views", "tags")
HEADERLESS_TSV = SourceFormat(format=DataFormat.tsv, header=False, columns=COLUMNS)


@pytest.fixture
def schema() -> Schema:
    data = DataConfig(
        name="t",
        train_path="x",
        features={
            "user": FeatureSpec(kind=FeatureKind.id, seed=1),
            "views": FeatureSpec(kind=FeatureKind.dense),
            "tags": FeatureSpec(kind=FeatureKind.id_list, seed=2, delimiter="|"),
        },
        tables={"user": TableSpec(num_buckets=100), "tags": TableSpec(num_buckets=100)},
    )
    return resolve_schema(data, 8)


@pytest.mark.parametrize(
    "fmt",
    [
        SourceFormat(),
        SourceFormat(format=DataFormat.csv),
        HEADERLESS_TSV,
        SourceFormat(format=DataFormat.criteo),
    ],
    ids=["parquet", "csv", "headerless-tsv", "criteo"],
)
def test_manifest_records_the_source_layout(tmp_path: Path, schema: Schema, fmt) -> None:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema": schema.to_dict(),
        "tables": {},
        "dense": {},
        "source": source_entry(fmt),
    }
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = Manifest.load(tmp_path).source
    assert loaded.format is fmt.format
    if fmt.format is not DataFormat.parquet:
        assert fixed_columns(loaded) == fixed_columns(fmt)
        assert manifest["source"]["delimiter"] == delimiter(fmt)
    if fmt.format is DataFormat.criteo:  # spelled out for serving systems that read it
        assert manifest["source"] == {
            "format": "criteo",
            "header": False,
            "columns": list(CRITEO_COLUMNS),
            "delimiter": "\t",
        }

    del manifest["source"]  # an export written before the manifest recorded it
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert Manifest.load(tmp_path).source is None


def test_the_recorded_format_wins_over_the_file_name() -> None:
    assert records_format(HEADERLESS_TSV, "records.csv") == HEADERLESS_TSV
    as_csv = records_format(HEADERLESS_TSV, "records.tsv", "csv")
    assert as_csv == SourceFormat(format=DataFormat.csv, header=False, columns=COLUMNS)
    # Criteo's fixed layout is not carried over to other text: a header line names columns.
    criteo = SourceFormat(format=DataFormat.criteo, header=False, columns=CRITEO_COLUMNS)
    assert records_format(criteo, "x", "csv") == SourceFormat(format=DataFormat.csv)


def test_old_exports_keep_their_file_name_rule_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert records_format(None, "r.csv").format is DataFormat.csv
    assert "does not record" in caplog.text
    assert records_format(None, "r.parquet").format is DataFormat.parquet
    assert records_format(None, "r.csv", "tsv") == SourceFormat(format=DataFormat.tsv)


def _write_tsv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_records_are_read_as_training_reads_them(tmp_path: Path, schema: Schema) -> None:
    # Headerless TSV under a misleading name; the label column holds anything (not read).
    lines = ["?\t021\t1.5\ta|b", "?\tNA\t\t", "?\t7\t-2\tc", "?\t\t3e2\ta||b", "?\tnull\t0\t"]
    path = _write_tsv(tmp_path / "records.parquet", lines)
    blocks = list(read_records(str(path), HEADERLESS_TSV, schema, batch_rows=2))
    assert [b.num_rows for b in blocks] == [2, 2, 1]
    records = pa.concat_tables(blocks)
    assert records["user"].to_pylist() == ["021", "NA", "7", None, "null"]  # text, "" missing
    assert records["views"].to_pylist() == [1.5, None, -2.0, 300.0, 0.0]
    arrays = featurize(records, schema, with_labels=False)
    np.testing.assert_allclose(arrays.dense[:, 0], [1.5, 0.0, -2.0, 300.0, 0.0])
    assert arrays.lengths["tags"].tolist() == [2, 0, 1, 2, 0]


def test_a_bad_record_fails_even_if_training_skipped_bad_rows(
    tmp_path: Path, schema: Schema
) -> None:
    """A dropped record would shift every later score onto the wrong input row."""
    path = _write_tsv(tmp_path / "r.tsv", ["1\ta\t1\tx", "0\tb\t2\tx", "1\tc\tabc\tx"])
    skipping = replace(HEADERLESS_TSV, on_bad_row=OnBadRow.skip)
    with pytest.raises(DataError, match=r"r\.tsv, line 3, column 'views': value 'abc'"):
        list(read_records(str(path), skipping, schema, batch_rows=10))


def test_records_in_another_format_point_at_the_format_flag(tmp_path: Path, schema: Schema) -> None:
    path = _write_tsv(tmp_path / "r.tsv", ["1\ta\t1\tx"])
    with pytest.raises(DataError, match="cannot be read as Parquet.*--format"):
        list(read_records(str(path), SourceFormat(), schema, batch_rows=10))
    parquet = tmp_path / "r.parquet"
    pq.write_table(pa.table({"user": ["a"], "views": [1.0], "tags": [["x"]]}), parquet)
    (records,) = read_records(str(parquet), SourceFormat(), schema, batch_rows=10)
    assert records.num_rows == 1  # no label column needed to score
