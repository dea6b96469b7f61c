"""Tests for `recsys-data synth` (data_tools.synth): determinism, Zipf skew, planted labels,
the worlds' structure, the report beside the data and the `data=synth` config."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import mpmath
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sparse
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from data_tools.criteo import CATEGORICAL_COLUMNS, COLUMNS, DENSE_COLUMNS
from data_tools.planted import (
    BLOCK_ROWS,
    CATEGORY_RANKS,
    HEAD_RANKS,
    P_TRUE,
    WORLDS,
    BoundedZipf,
    PlantedModel,
    World,
)
from data_tools.synth import (
    REPORT_FILE,
    OutputFormat,
    SynthOptions,
    SynthReport,
    is_written,
    read_report,
    write_synthetic,
)
from recsys.cli.data import main
from recsys.compose import load_config
from recsys.config import ConfigError
from recsys.data.loader import LoaderOptions, StreamingDataset
from recsys.data.source import SourceFormat
from recsys.metrics.binary import auc
from recsys.schema import resolve_schema

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
        ({"zipf": -0.5}, "zipf"),
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


def test_cli_world_and_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        "synth",
        "--out",
        str(tmp_path),
        "--rows",
        "500",
        "--world",
        "cold_start",
        "--seed",
        "3",
    ]
    assert main(args) == 0
    assert "world cold_start" in capsys.readouterr().out
    report = read_report(tmp_path)
    assert (report["world"], report["seed"], report["rows"]) == ("cold_start", 3, 500)
    assert report["distinct"][0] == WORLDS[World.cold_start].distinct
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path), "--rows", "5", "--world", "flat"])
    with pytest.raises(ConfigError, match="not written by `recsys-data synth`"):
        read_report(tmp_path / "elsewhere")


# ---- worlds ----------------------------------------------------------------------------------

WORLD_ROWS = 3_000


def _write(out: Path, world: World, rows: int = WORLD_ROWS, **kwargs) -> pa.Table:
    report = write_synthetic(SynthOptions(out=str(out), rows=rows, world=world, **kwargs))
    return _read(report)


def test_default_world_is_the_original_model_pinned() -> None:
    """The default (mixed) world's rows, pinned by digest: worlds must not change its bytes."""
    table = PlantedModel(SynthOptions(out="unused", rows=2_000, distinct=(100,)).draw()).block(
        0, 2_000
    )
    digest = hashlib.sha256()
    for column in ("label", "I1", "C1", "C10", P_TRUE):
        for buffer in table.column(column).combine_chunks().buffers():
            digest.update(b"" if buffer is None else buffer.to_pybytes())
    assert digest.hexdigest()[:16] == "281d50729a1243fd"  # the original model's
    assert SynthOptions(out="x", rows=1).world is World.mixed


@pytest.mark.parametrize("world", list(World))
def test_each_world_is_deterministic(tmp_path: Path, world: World) -> None:
    first = write_synthetic(SynthOptions(out=str(tmp_path / "a"), rows=WORLD_ROWS, world=world))
    again = write_synthetic(SynthOptions(out=str(tmp_path / "b"), rows=WORLD_ROWS, world=world))
    assert _sha(first.files[0]) == _sha(again.files[0])
    assert 0.15 < first.ctr < 0.35 and first.auc_p_true > 0.7


def test_worlds_share_the_counts_and_differ_in_labels(tmp_path: Path) -> None:
    tables = {w: _write(tmp_path / w, w, distinct=(1_000,)) for w in World}
    mixed = tables[World.mixed]
    for world, table in tables.items():
        assert table.column_names == [*COLUMNS, P_TRUE]
        assert table.select(DENSE_COLUMNS).equals(mixed.select(DENSE_COLUMNS))
        if world is not World.mixed:
            p_true = table.column(P_TRUE).to_numpy()
            assert np.abs(p_true - mixed.column(P_TRUE).to_numpy()).mean() > 0.05, world


def test_report_file_matches_the_data(tmp_path: Path) -> None:
    table = _write(tmp_path, World.pairwise, seed=5, model_seed=2)
    saved = json.loads((tmp_path / REPORT_FILE).read_text())
    labels = table.column("label").to_numpy().astype(np.float64)
    exact = auc(torch.tensor(labels), torch.tensor(table.column(P_TRUE).to_numpy()))
    assert saved["auc_p_true"] == pytest.approx(float(exact), abs=1e-3)  # 2^16 histogram bins
    assert saved["ctr"] == pytest.approx(labels.mean(), abs=1e-12)
    assert (saved["rows"], saved["clicks"]) == (WORLD_ROWS, int(labels.sum()))
    assert saved["mean_p_true"] == pytest.approx(table.column(P_TRUE).to_numpy().mean())
    assert (saved["world"], saved["seed"], saved["model_seed"]) == ("pairwise", 5, 2)
    assert saved["distinct"] == [WORLDS[World.pairwise].distinct] * len(CATEGORICAL_COLUMNS)


def _seen_share(train: pa.Table, eval_: pa.Table, column: str) -> float:
    """Share of eval rows (with a value) whose `column` value appears in train."""
    values = eval_.column(column).drop_null()
    return pc.mean(pc.is_in(values, value_set=pc.unique(train.column(column)))).as_py()


def test_cold_start_eval_ids_are_new_but_categories_are_not(tmp_path: Path) -> None:
    seen = {}
    for world in (World.cold_start, World.pairwise):
        train = _write(tmp_path / world / "train", world, rows=20_000)
        eval_ = _write(tmp_path / world / "eval", world, seed=1)
        seen[world] = {c: _seen_share(train, eval_, c) for c in ("C1", "C9")}
    # measured here (first version of cold_start, the same ids): cold_start C1 0.005;
    # pairwise C1 0.87 (with 5e5 training rows and 1e5 eval rows: 0.097 and 1.000)
    assert seen[World.cold_start]["C1"] < 0.05 and seen[World.pairwise]["C1"] > 0.8, seen
    assert seen[World.cold_start]["C9"] > 0.75, seen  # the category column: frequent values


def test_cold_start_category_is_a_function_of_the_id(tmp_path: Path) -> None:
    table = _write(tmp_path, World.cold_start, distinct=(2_000_000,), missing_rate=0.0)
    pairs = table.group_by("C1").aggregate([("C9", "count_distinct")])
    assert pc.max(pairs.column("C9_count_distinct")).as_py() == 1
    categories = -(-2_000_000 // CATEGORY_RANKS)
    assert len(pc.unique(table.column("C9"))) <= categories < len(pc.unique(table.column("C1")))


def test_a_cold_start_id_carries_nothing_beyond_its_category() -> None:
    """Two ids of one category move p_true alike, so an unseen id costs no achievable AUC;
    in first_order the same two ids differ (the check can fail)."""
    columns = len(CATEGORICAL_COLUMNS)

    def id_effects(world: World, c1_rank: int) -> float:
        model = PlantedModel(SynthOptions(out="unused", rows=1, world=world).draw())
        ranks = [np.array([1]) for _ in range(columns)]
        ranks[0] = np.array([c1_rank])
        for column, parent in WORLDS[world].categories:  # the category the generator would draw
            ranks[column] = (ranks[parent] - 1) // CATEGORY_RANKS + 1
        return float(model._id_effects(ranks)[0])

    same_category = (2, CATEGORY_RANKS)  # ranks 1..CATEGORY_RANKS share category 1
    assert id_effects(World.cold_start, same_category[0]) == id_effects(
        World.cold_start, same_category[1]
    )
    assert id_effects(World.cold_start, 2) != id_effects(World.cold_start, CATEGORY_RANKS + 1)
    assert id_effects(World.first_order, 2) != id_effects(World.first_order, 3)


def _numpy(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    return np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in columns], axis=1)


def _linear_features(table: pa.Table, encoder: OneHotEncoder) -> sparse.csr_matrix:
    """One-hot ids and log counts; a missing count gets the column mean (no effect, as planted)."""
    dense = np.log1p(_numpy(table, DENSE_COLUMNS).astype(np.float64))
    dense = np.where(np.isnan(dense), np.nanmean(dense, axis=0), dense)
    ids = encoder.transform(_numpy(table, CATEGORICAL_COLUMNS).astype(str))
    return sparse.hstack([ids, sparse.csr_matrix(dense)]).tocsr()


def _logistic_regression_auc(train: pa.Table, eval_: pa.Table) -> float:
    """Eval AUC of a logistic regression fitted on `train`: the model of world first_order."""
    encoder = OneHotEncoder(handle_unknown="ignore")
    encoder.fit(_numpy(train, CATEGORICAL_COLUMNS).astype(str))
    model = LogisticRegression(max_iter=1_000)
    model.fit(_linear_features(train, encoder), train.column("label").to_numpy())
    scores = model.predict_proba(_linear_features(eval_, encoder))[:, 1]
    return roc_auc_score(eval_.column("label").to_numpy(), scores)


# Measured gaps AUC(p_true) - AUC(regression): first_order 0.016, pairwise 0.129 (mixed 0.059).
@pytest.mark.parametrize(
    ("world", "low", "high"), [(World.first_order, 0.0, 0.03), (World.pairwise, 0.08, 1.0)]
)
def test_a_linear_model_reaches_p_true_only_without_interactions(
    tmp_path: Path, world: World, low: float, high: float
) -> None:
    """20 ids per column, so 20,000 rows estimate every effect: what is left is structure."""
    train = _write(tmp_path / "train", world, rows=20_000, distinct=(20,))
    eval_ = _write(tmp_path / "eval", world, rows=20_000, seed=1, distinct=(20,))
    best = read_report(tmp_path / "eval")["auc_p_true"]
    gap = best - _logistic_regression_auc(train, eval_)
    assert low <= gap <= high, (world, best, gap)


def test_synth_config_reads_a_batch_through_the_loader(tmp_path: Path) -> None:
    write_synthetic(SynthOptions(out=str(tmp_path), rows=300, world=World.cold_start))
    data = load_config(["data=synth", f"data.train_path={tmp_path}"]).data
    schema = resolve_schema(data, 16)
    assert P_TRUE not in schema.columns and set(schema.columns) == set(COLUMNS)
    assert all(t.num_buckets == data.default_num_buckets for t in schema.tables)
    assert "recsys-data synth --world" in data.prepare_hint
    options = LoaderOptions(batch_size=64, source=SourceFormat.from_config(data))
    batch = next(iter(StreamingDataset(data.train_path, schema, options)))
    assert batch.dense.shape == (64, len(DENSE_COLUMNS))
    assert batch.sparse.keys() == list(CATEGORICAL_COLUMNS)
    labels = pq.read_table(tmp_path, columns=["label"]).column("label").to_numpy()[:64]
    assert batch.labels.numpy().tolist() == labels.astype(np.float32).tolist()


def test_a_cached_log_written_by_another_version_of_its_world_is_not_reused(
    tmp_path: Path,
) -> None:
    options = SynthOptions(out=str(tmp_path), rows=300, world=World.cold_start)
    assert not is_written(options)
    write_synthetic(options)
    assert is_written(options)
    assert not is_written(SynthOptions(out=str(tmp_path), rows=301, world=World.cold_start))
    assert not is_written(SynthOptions(out=str(tmp_path), rows=300, world=World.pairwise))
    report_path = tmp_path / REPORT_FILE
    report = json.loads(report_path.read_text())
    report["planted"]["category_ranks"] = 1_000  # what the first cold_start world used
    report_path.write_text(json.dumps(report))
    assert not is_written(options)
