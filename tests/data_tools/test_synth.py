"""Tests for `recsys-data synth` (data_tools.synth): determinism, Zipf skew, planted labels."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import mpmath
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from data_tools.criteo import COLUMNS
from data_tools.synth import (
    BLOCK_ROWS,
    HEAD_RANKS,
    P_TRUE,
    BoundedZipf,
    OutputFormat,
    SynthOptions,
    SynthReport,
    write_synthetic,
)
from recsys.cli.data import main
from recsys.config import ConfigError
from recsys.metrics.binary import auc

ROWS = BLOCK_ROWS + 4_321  # crosses a block boundary and ends inside a block


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read(report: SynthReport) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in report.files])


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthReport, pa.Table]:
    out = tmp_path_factory.mktemp("synth")
    report = write_synthetic(SynthOptions(out=str(out), rows=ROWS, seed=7, distinct=(5_000,)))
    return report, _read(report)


def _harmonic(n: int, s: float) -> float:
    """H(n, s) = sum_{k<=n} k^-s exactly (Hurwitz zeta), independent of the sampler's maths."""
    return float(mpmath.zeta(s, 1) - mpmath.zeta(s, n + 1)) if s != 1 else float(mpmath.harmonic(n))


def test_same_seed_same_bytes_whatever_the_layout(tmp_path: Path, log) -> None:
    report, table = log
    again = write_synthetic(
        SynthOptions(out=str(tmp_path / "a"), rows=ROWS, seed=7, distinct=(5_000,))
    )
    assert _sha(again.files[0]) == _sha(report.files[0])

    regrouped = write_synthetic(
        SynthOptions(
            out=str(tmp_path / "b"),
            rows=ROWS,
            seed=7,
            distinct=(5_000,),
            row_group_rows=9_999,
            files=3,
        )
    )
    assert len(regrouped.files) == 3
    assert pq.ParquetFile(regrouped.files[0]).metadata.row_group(0).num_rows == 9_999
    assert _read(regrouped).equals(table)

    other = write_synthetic(
        SynthOptions(out=str(tmp_path / "c"), rows=ROWS, seed=8, distinct=(5_000,))
    )
    assert not _read(other).column("C1").equals(table.column("C1"))


def _mean_p_by_id(table: pa.Table, column: str, min_rows: int) -> dict[str, float]:
    grouped = table.group_by(column).aggregate([(P_TRUE, "mean"), (P_TRUE, "count")])
    rows = grouped.to_pylist()
    return {
        r[column]: r[f"{P_TRUE}_mean"]
        for r in rows
        if r[column] is not None and r[f"{P_TRUE}_count"] >= min_rows
    }


def test_eval_split_shares_the_planted_world(tmp_path: Path, log) -> None:
    _, train = log  # seed 7, model_seed 0
    same = write_synthetic(
        SynthOptions(out=str(tmp_path / "e"), rows=20_000, seed=8, distinct=(5_000,))
    )
    other = write_synthetic(
        SynthOptions(out=str(tmp_path / "o"), rows=20_000, seed=8, model_seed=1, distinct=(5_000,))
    )
    a, b = _mean_p_by_id(train, "C1", 300), _mean_p_by_id(_read(same), "C1", 100)
    shared = sorted(set(a) & set(b))
    assert len(shared) >= 5
    assert np.corrcoef([a[i] for i in shared], [b[i] for i in shared])[0, 1] > 0.8
    assert not set(a) & set(_mean_p_by_id(_read(other), "C1", 100))  # another world's ids


def test_layout_types_and_missing_rate(log) -> None:
    _, table = log
    assert table.column_names == [*COLUMNS, P_TRUE]
    assert table.schema.field("label").type == pa.int8()
    assert table.schema.field("I1").type == pa.int64()
    assert table.schema.field("C1").type == pa.string()
    assert table.column("label").null_count == 0
    lengths = pc.unique(pc.utf8_length(table.column("C5"))).to_pylist()
    assert sorted(x for x in lengths if x is not None) == [8]
    missing = np.mean([table.column(c).null_count / table.num_rows for c in COLUMNS[1:]])
    assert abs(missing - 0.05) < 0.003
    # distinct ids never exceed the configured count, and Zipf reaches deep into the tail
    assert 3_000 < len(pc.unique(table.column("C2"))) <= 5_000 + 1


@pytest.mark.parametrize(("n", "s"), [(1_000, 1.0), (10**9, 1.05), (10**12, 0.8)])
def test_bounded_zipf_matches_theory(n: int, s: float) -> None:
    draws = 400_000
    ranks = BoundedZipf(n, s).sample(np.random.default_rng(0).random(draws))
    assert ranks.min() >= 1 and ranks.max() <= n
    h = _harmonic(n, s)
    checks = [(ranks == 1, 1.0 / h), (ranks <= 10, _harmonic(10, s) / h)]
    if n > HEAD_RANKS:  # the integral-inverted tail: share of ranks beyond 10^6
        checks.append((ranks > 10**6, 1.0 - _harmonic(10**6, s) / h))
    for hits, p in checks:
        sigma = np.sqrt(p * (1 - p) / draws)
        assert abs(hits.mean() - p) < 5 * sigma + 1e-4, (hits.mean(), p)


def test_top_id_share_in_written_data(log) -> None:
    _, table = log
    counts = table.column("C3").drop_null().value_counts()
    top = max(counts.field("counts").to_pylist()) / (table.num_rows - table.column("C3").null_count)
    p = 1.0 / _harmonic(5_000, 1.05)
    assert abs(top - p) < 5 * np.sqrt(p * (1 - p) / table.num_rows)


def test_p_true_calibrated_and_informative(log) -> None:
    report, table = log
    labels = table.column("label").to_numpy().astype(np.float64)
    p_true = table.column(P_TRUE).to_numpy()
    sigma = np.sqrt((p_true * (1 - p_true)).sum()) / len(p_true)
    assert abs(labels.mean() - p_true.mean()) < 4 * sigma
    exact = auc(torch.tensor(labels), torch.tensor(p_true))
    assert exact > 0.7
    assert report.auc_p_true == pytest.approx(exact, abs=1e-3)
    assert report.ctr == pytest.approx(labels.mean())
    # The planted effects are real: the best single id column predicts clicks by itself.
    by_id = (
        pa.table({"c": table.column("C1"), "y": labels}).group_by("c").aggregate([("y", "mean")])
    )
    assert np.std(by_id.column("y_mean").to_numpy()) > 0.1


def test_tsv_is_raw_criteo_with_40_columns(tmp_path: Path, log) -> None:
    _, table = log
    report = write_synthetic(
        SynthOptions(
            out=str(tmp_path), rows=ROWS, seed=7, distinct=(5_000,), format=OutputFormat.tsv
        )
    )
    text = Path(report.files[0]).read_text()
    assert text[-1] == "\n" and text.count("\n") == ROWS and "\t\t" in text  # empty = missing
    parsed = pacsv.read_csv(
        report.files[0],
        read_options=pacsv.ReadOptions(autogenerate_column_names=True),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
    )
    assert parsed.num_columns == 40 and parsed.num_rows == ROWS
    assert parsed.column(0).to_pylist() == table.column("label").to_pylist()
    assert parsed.column(14).to_pylist() == table.column("C1").to_pylist()


def test_ids_beyond_2_pow_32_use_16_hex_digits(tmp_path: Path) -> None:
    report = write_synthetic(SynthOptions(out=str(tmp_path), rows=1_000, distinct=(10**10,)))
    lengths = pc.unique(pc.utf8_length(pq.read_table(report.files[0]).column("C1").drop_null()))
    assert lengths.to_pylist() == [16]


def test_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    write_synthetic(SynthOptions(out=str(tmp_path / "warm"), rows=100))  # first-use caches
    peaks = []
    for blocks in (2, 5):
        options = SynthOptions(
            out=str(tmp_path / str(blocks)), rows=blocks * BLOCK_ROWS, row_group_rows=BLOCK_ROWS
        )
        tracemalloc.start()
        write_synthetic(options)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.15 * peaks[0], peaks  # 2.5x the rows, the same peak


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"distinct": (10, 20)}, "distinct"),
        ({"missing_rate": 1.0}, "missing_rate"),
        ({"files": 0}, "files"),
        ({"gzip": True}, "gzip"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SynthOptions(out="x", rows=10, **kwargs)


def test_cli_prints_ctr_and_best_auc(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", "--out", str(tmp_path), "--rows", "2e3", "--distinct", "100"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2,000 rows" in out and "best achievable AUC" in out and "CTR" in out
    assert pq.read_metadata(tmp_path / "part-00000.parquet").num_rows == 2_000
    assert main(["synth", "--out", str(tmp_path), "--rows", "10", "--distinct", "1,2,3"]) == 2
    assert "distinct has 3 values" in capsys.readouterr().err
