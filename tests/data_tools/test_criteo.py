"""Tests for `recsys-data criteo-to-parquet` (data_tools.criteo) on synthetic raw Criteo TSV."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from data_tools.criteo import ARROW_SCHEMA, COLUMNS, BadLinePolicy, ConvertOptions, convert_criteo
from data_tools.planted import P_TRUE
from data_tools.synth import OutputFormat, SynthOptions, write_synthetic
from recsys.cli.data import main
from recsys.data.featurize import DataError

ROWS = 5_000


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], pa.Table]:
    """Raw TSV in 2 gzipped files, and the same rows as the generator's own Parquet."""
    root = tmp_path_factory.mktemp("criteo")
    common = {"rows": ROWS, "seed": 3, "distinct": (500,), "files": 2, "missing_rate": 0.2}
    tsv = write_synthetic(
        SynthOptions(out=str(root / "tsv"), format=OutputFormat.tsv, gzip=True, **common)
    )
    parquet = write_synthetic(SynthOptions(out=str(root / "pq"), **common))
    table = pa.concat_tables([pq.read_table(f) for f in parquet.files]).drop_columns([P_TRUE])
    return tsv.files, table


def _direct_read(path: str) -> pa.Table:
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=list(COLUMNS)),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types=ARROW_SCHEMA, strings_can_be_null=True),
    )


def test_tsv_to_parquet_keeps_every_value(tmp_path: Path, synth) -> None:
    files, expected = synth
    out = tmp_path / "all.parquet"
    report = convert_criteo(
        str(Path(files[0]).parent), str(out), ConvertOptions(row_group_rows=999)
    )
    assert report.rows == ROWS and report.outputs == [str(out)]
    converted = pq.read_table(out)
    assert converted.schema == ARROW_SCHEMA
    assert converted.equals(expected)
    assert converted.equals(pa.concat_tables([_direct_read(f) for f in files]))
    metadata = pq.read_metadata(out)
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)][:2] == [999] * 2
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_folder_output_has_one_file_per_input(tmp_path: Path, synth) -> None:
    files, expected = synth
    glob = str(Path(files[0]).parent / "part-*.tsv.gz")
    report = convert_criteo(glob, str(tmp_path / "out"))
    assert [Path(p).name for p in report.outputs] == ["part-00000.parquet", "part-00001.parquet"]
    assert pa.concat_tables([pq.read_table(p) for p in report.outputs]).equals(expected)


def _write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _lines(synth, n: int) -> list[str]:
    with gzip.open(synth[0][0], "rt") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def test_wrong_field_count_names_file_and_line(tmp_path: Path, synth) -> None:
    lines = _lines(synth, 6)
    lines[3] += "\textra"
    lines[4] = "\t".join(lines[4].split("\t")[:39])  # trailing empty field stripped: padded
    src = _write_lines(tmp_path / "day_0.tsv", lines)
    dst = tmp_path / "out.parquet"
    with pytest.raises(DataError, match=r"day_0\.tsv:4: line has 41 fields instead of 40"):
        convert_criteo(src, str(dst))
    assert not dst.exists() and not list(tmp_path.glob(".out*"))  # atomic: nothing half-written

    report = convert_criteo(src, str(dst), ConvertOptions(on_bad_line=BadLinePolicy.skip))
    assert report.rows == 5 and report.skipped_lines == 1 and report.padded_lines == 1
    assert "day_0.tsv:4" in report.skipped_examples[0]
    assert pq.read_table(dst).column("C26")[3].as_py() is None  # line 5, row 4: C26 missing


def test_non_integer_count_names_line_and_field(tmp_path: Path, synth) -> None:
    lines = _lines(synth, 5)
    fields = lines[2].split("\t")
    fields[3] = "12x"
    lines[2] = "\t".join(fields)
    src = _write_lines(tmp_path / "bad.tsv", lines)
    with pytest.raises(DataError, match=r"bad\.tsv:3, field 'I3': '12x' is not an integer"):
        convert_criteo(src, str(tmp_path / "out.parquet"))


def test_cli_converts_and_reports_errors(tmp_path: Path, synth, capsys) -> None:
    files, _ = synth
    assert main(["criteo-to-parquet", files[1], str(tmp_path / "one.parquet")]) == 0
    assert f"converted {ROWS // 2:,} rows from 1 file(s)" in capsys.readouterr().out
    assert main(["criteo-to-parquet", str(tmp_path / "nothing*.tsv"), str(tmp_path / "x")]) == 2
    assert "matches no files" in capsys.readouterr().err
