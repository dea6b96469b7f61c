"""`recsys-data infer-schema`: guesses from real files, a YAML that composes, and trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.cli.data import main
from recsys.compose import load_config
from recsys.config import ConfigError, DenseTransform, FeatureKind
from recsys.data.infer import InferOptions, infer_data_config, num_buckets_for, one_path
from recsys.schema import resolve_schema
from tests.data.test_text import write_text
from tests.synthetic import make_click_log

ROWS = 2000


def _log(rows: int = ROWS, seed: int = 1) -> pa.Table:
    """The tiny click log plus columns that test the guesses."""
    table = make_click_log(rows, seed)
    rng = np.random.default_rng(seed)
    views = np.floor(rng.pareto(1.2, rows) * 20).astype(np.int64)  # counts: heavy tail
    extra = {
        "views": views,
        "price": np.round(rng.normal(10, 2, rows), 2),  # numbers
        "constant": np.full(rows, 7),
        "clicked_any": rng.integers(0, 2, rows),  # a 0/1 flag not named like a label
        "request": [f"r{i:08x}" for i in rng.permutation(rows)],  # a row key: one per row
        # as distinct, but its head repeats: a long-tailed id, kept
        "referrer": [f"s{i if i >= rows // 50 else 0:08x}" for i in rng.permutation(rows)],
        "hour": 14102100 + np.sort(rng.integers(0, 10, rows)) * 100 + rng.integers(0, 24, rows),
        "sent_ms": 1_700_000_000_000 + np.sort(rng.integers(0, 10**9, rows)),  # Unix ms
        "bid": np.round(rng.normal(5e7, 50, rows), 1),  # a large mean, a small spread
    }
    for name, values in extra.items():
        table = table.append_column(name, pa.array(values))
    return table


EXPECTED_KINDS = {
    "user_id": FeatureKind.id,  # integers named like an id
    "item_id": FeatureKind.id,
    "rating": FeatureKind.id,  # integers, few values
    "gender": FeatureKind.id,  # text
    "age": FeatureKind.dense,
    "age_bucket": FeatureKind.id,
    "occupation": FeatureKind.id,
    "zip_prefix": FeatureKind.id,  # "007": text, also in CSV
    "genres": FeatureKind.id_list,  # a list column, or "|"-joined text
    "release_year": FeatureKind.id,  # few values
    "user_prior_ratings": FeatureKind.dense,  # integers, many values
    "user_prior_like_rate": FeatureKind.dense,  # floats
    "item_prior_ratings": FeatureKind.dense,
    "item_prior_like_rate": FeatureKind.dense,
    "views": FeatureKind.dense,
    "price": FeatureKind.dense,
    "clicked_any": FeatureKind.id,
    "bid": FeatureKind.dense,
    "referrer": FeatureKind.id,
}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"parquet": tmp_path / "train.parquet", "csv": tmp_path / "train.csv"}
    pq.write_table(_log(), paths["parquet"], row_group_size=700)
    write_text(paths["csv"], _log())
    paths["eval"] = tmp_path / "eval.csv"
    write_text(paths["eval"], _log(500, seed=2))
    return paths


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_guesses(files: dict[str, Path], fmt: str) -> None:
    inferred = infer_data_config(str(files[fmt]), InferOptions(name="clicks"))
    data = inferred.data
    assert data.label.column == "label" and data.label.threshold is None
    assert {n: f.kind for n, f in data.features.items()} == EXPECTED_KINDS
    reasons = {g.column: g.reason for g in inferred.guesses if g.kind is None}
    assert set(reasons) == {"timestamp", "constant", "request", "hour", "sent_ms"}
    assert "row key" in reasons["request"] and "YYMMDDHH" in reasons["hour"]
    assert "Unix milliseconds" in reasons["sent_ms"]
    assert data.features["views"].transform is DenseTransform.log1p
    assert data.features["price"].transform is DenseTransform.none
    assert data.features["genres"].delimiter == ("|" if fmt == "csv" else None)
    # mean / std are those of what the model sees: after log1p for views
    views = np.log1p(_log().column("views").to_numpy())
    assert data.features["views"].mean == pytest.approx(views.mean(), rel=1e-3)
    assert data.features["views"].std == pytest.approx(views.std(), rel=1e-3)
    # rounded to a small share of its std, not to 4 digits (that would move it by 100 std)
    bid = _log().column("bid").to_numpy()
    assert abs(data.features["bid"].mean - bid.mean()) < 0.01 * bid.std()
    assert data.tables["user_id"].num_buckets == 8192  # 60 users: 100 rows per id
    seeds = [f.seed for f in data.features.values() if f.kind is not FeatureKind.dense]
    assert sorted(seeds) == list(range(1, len(seeds) + 1))


def test_num_buckets_from_distinct_counts() -> None:
    assert [num_buckets_for(n, 1 << 20) for n in (1, 8, 600, 700, 20_000, 10**6)] == [
        128,
        1024,
        65536,
        65536,
        131072,
        1 << 20,
    ]


def test_labels_named_guessed_or_missing(files: dict[str, Path], tmp_path: Path) -> None:
    path = str(files["parquet"])
    named = infer_data_config(path, InferOptions(name="x", label="clicked_any"))
    assert named.data.label.column == "clicked_any"
    assert "label" not in named.data.features  # another outcome: a leak, skipped
    with pytest.raises(ConfigError, match=r"--label age: not every value is 0 or 1.*--threshold"):
        infer_data_config(path, InferOptions(name="x", label="age"))
    rated = infer_data_config(path, InferOptions(name="x", label="rating", threshold=4))
    assert rated.data.label.threshold == 4
    unlabeled = tmp_path / "unlabeled.parquet"
    pq.write_table(_log().rename_columns(["outcome", *_log().column_names[1:]]), unlabeled)
    with pytest.raises(ConfigError, match=r"no label column found.*--label COL.*'outcome'"):
        infer_data_config(str(unlabeled), InferOptions(name="x"))


def test_one_path_for_a_shell_glob(tmp_path: Path) -> None:
    for name in ("a.parquet", "b.parquet", "c.csv"):
        (tmp_path / name).write_text("x")
    parquets = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    assert one_path(parquets) == str(tmp_path / "*.parquet")
    assert one_path([*parquets, str(tmp_path / "c.csv")]) == str(tmp_path)
    with pytest.raises(ConfigError, match="no folder or glob names exactly them"):
        one_path([str(tmp_path / "a.parquet"), str(tmp_path / "c.csv")])


def test_odd_column_names_make_valid_yaml(tmp_path: Path) -> None:
    table = pa.table(
        {
            "y": [0, 1] * 50,
            "user id": [f"u{i % 7}" for i in range(100)],
            "1st: item": [f"i{i % 5}" for i in range(100)],
            "true": [f"t{i % 3}" for i in range(100)],
        }
    )
    pq.write_table(table, tmp_path / "odd.parquet")
    out = tmp_path / "conf" / "data" / "odd.yaml"
    assert main(["infer-schema", str(tmp_path / "odd.parquet"), "--out", str(out)]) == 0
    data = load_config(["data=odd"], config_dir=str(tmp_path / "conf")).data
    columns = {name: f.column or name for name, f in data.features.items()}
    assert columns == {"user_id": "user id", "f_1st_item": "1st: item", "f_true": "true"}
    assert data.label.column == "y"
    assert main(["stats", "--config-dir", str(tmp_path / "conf"), "data=odd"]) == 0


def test_cli_refuses_to_overwrite_or_shadow(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "conf" / "data" / "clicks.yaml"
    args = ["infer-schema", str(files["parquet"]), "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 2 and "exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    shadow = ["infer-schema", str(files["parquet"]), "--name", "movielens", "--out", str(out)]
    assert main(shadow) == 2 and "packaged data config" in capsys.readouterr().err


@pytest.mark.slow
def test_the_written_config_trains(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    from recsys.train.recipe import run

    conf = tmp_path / "conf"
    args = ["infer-schema", str(files["csv"]), "--name", "clicks", "--label", "label"]
    args += ["--eval-path", str(files["eval"]), "--out", str(conf / "data" / "clicks.yaml")]
    assert main(args) == 0
    assert f"recsys-train --config-dir {conf} data=clicks" in capsys.readouterr().out
    overrides = ["data=clicks", "tracking=none", "export.enabled=false", "trainer.max_steps=4"]
    overrides += ["trainer.batch_size=128", "trainer.progress_bar=false"]
    cfg = load_config(overrides, output_dir=str(tmp_path / "run"), config_dir=str(conf))
    assert resolve_schema(cfg.data, 16).table("user_id").num_buckets == 8192
    result = run(cfg)
    assert result.steps == 4 and 0.0 <= result.metrics["eval/auc"] <= 1.0
