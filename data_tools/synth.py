"""Synthetic click logs of any size, drawn from a planted model, streamed to Parquet or TSV.

Layout `criteo`: `label`, `I1`..`I13` (integer counts), `C1`..`C26` (8-hex-digit ids, 16 hex
digits when a column has more than 2^32 distinct ids); any value but the label may be missing.
Parquet output adds `p_true`, the click probability the label was drawn from, so
AUC(label, p_true) is the best AUC any model can reach on the data.

How it scales:
* Ids and labels: drawn by the planted model (data_tools.planted): nothing is stored per
  id, so a column can have 10^9+ distinct ids.
* Rows: randomness is drawn in blocks of `BLOCK_ROWS` rows from a generator seeded by
  (seed, block index). The bytes therefore depend only on the options that change the data
  (seed, model_seed, world, rows, distinct, zipf, missing rate), never on row-group sizes or file
  counts, and memory is one block plus one row group whatever the number of rows.
* Splits: `seed` draws the rows; `world` and `model_seed` fix the world they come from (which
  id each rank is, every id's effect, the dense distributions). Train and eval logs of one
  world share `world` and `model_seed` (and `distinct`, `zipf`) and differ in `seed`, so a
  model trained on one can be judged on the other. Each output folder gets `REPORT_FILE`
  with its CTR and best AUC (`read_report`).

Worlds (what the label depends on) are described in data_tools.planted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from data_tools.arrow_io import RowStream, atomic_path
from data_tools.criteo import ARROW_SCHEMA, CATEGORICAL_COLUMNS, LABEL
from data_tools.planted import (
    BLOCK_ROWS,
    CATEGORY_RANKS,
    P_TRUE,
    PARQUET_SCHEMA,
    WORLDS,
    Draw,
    PlantedModel,
    World,
    WorldSpec,
)
from recsys.config import ConfigError

logger = logging.getLogger(__name__)

_AUC_BINS = 1 << 16

REPORT_FILE = "_report.json"
"""Written beside the data files; the leading '_' keeps the loader from reading it as data."""


class Layout(StrEnum):
    criteo = "criteo"


class OutputFormat(StrEnum):
    parquet = "parquet"
    tsv = "tsv"  # raw Criteo: tab separated, no header, empty = missing, no p_true


@dataclass(frozen=True)
class SynthOptions:
    """What `write_synthetic` generates and how it lays it out on disk.

    Attributes:
        out: output folder; files are `part-00000.parquet` (or `.tsv`, `.tsv.gz`), ...
        rows: total rows over all files.
        seed: draws the rows (same options -> same bytes).
        model_seed: the planted world: ids, per-id effects, dense distributions. Keep it
            for the eval split of a training log and change `seed`.
        world: the planted model (see the module docstring); train and eval splits of one
            world share `world`, `model_seed`, `distinct` and `zipf`.
        layout: column layout (only `criteo` for now).
        format: parquet (with `p_true`) or tsv (raw Criteo).
        distinct: distinct ids per categorical column: one value for all 26, or 26 values;
            None: the world's. A category column's count follows from its parent's.
        zipf: exponent s of P(rank k) ~ k^-s (0 = uniform; ~1 for click logs); None: the
            world's.
        missing_rate: chance that a value (any column but the label) is missing.
        row_group_rows: rows per Parquet row group.
        files: number of files; rows are split evenly, in order.
        gzip: compress TSV output (`.tsv.gz`).
        progress: show a progress bar on stderr.
    """

    out: str
    rows: int
    seed: int = 0
    model_seed: int = 0
    world: World = World.mixed
    layout: Layout = Layout.criteo
    format: OutputFormat = OutputFormat.parquet
    distinct: tuple[int, ...] | None = None
    zipf: float | None = None
    missing_rate: float = 0.05
    row_group_rows: int = 1 << 17
    files: int = 1
    gzip: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        distinct = (1,) if self.distinct is None else self.distinct
        problems = [
            (self.rows < 1, f"rows={self.rows}: need >= 1"),
            (not 1 <= self.files <= self.rows, f"files={self.files}: need 1 <= files <= rows"),
            (len(distinct) not in (1, len(CATEGORICAL_COLUMNS)), self._distinct_problem()),
            (min(distinct, default=0) < 1, f"distinct={self.distinct}: every count >= 1"),
            (self.zipf_exponent < 0, f"zipf={self.zipf}: need an exponent >= 0"),
            (not 0 <= self.missing_rate < 1, f"missing_rate={self.missing_rate}: need [0, 1)"),
            (self.row_group_rows < 1, f"row_group_rows={self.row_group_rows}: need >= 1"),
            (self.gzip and self.format is not OutputFormat.tsv, "gzip applies to format=tsv"),
        ]
        for bad, message in problems:
            if bad:
                raise ConfigError(f"synth option {message}.")

    def _distinct_problem(self) -> str:
        return (
            f"distinct has {len(self.distinct or ())} values: give one (for every column) or "
            f"{len(CATEGORICAL_COLUMNS)} (one per C column)"
        )

    @property
    def spec(self) -> WorldSpec:
        return WORLDS[self.world]

    @property
    def zipf_exponent(self) -> float:
        return self.spec.zipf if self.zipf is None else self.zipf

    def draw(self) -> Draw:
        """What the planted model draws the rows with."""
        distinct = tuple(self.distinct_of(c) for c in range(len(CATEGORICAL_COLUMNS)))
        return Draw(
            self.spec, self.seed, self.model_seed, distinct, self.zipf_exponent, self.missing_rate
        )

    def distinct_of(self, column: int) -> int:
        """Distinct values column `column` (0 = C1) can hold; a category column's follow from
        its parent's (one per CATEGORY_RANKS parent ranks), whatever `distinct` says."""
        parent = dict(self.spec.categories).get(column)
        if parent is not None:
            return -(-self.distinct_of(parent) // CATEGORY_RANKS)
        if self.distinct is None:
            return self.spec.distinct
        return self.distinct[0] if len(self.distinct) == 1 else self.distinct[column]


@dataclass
class SynthReport:
    files: list[str]
    rows: int = 0
    clicks: int = 0
    mean_p_true: float = 0.0
    auc_p_true: float = float("nan")  # best achievable AUC (histogram of p_true, 2^16 bins)
    _pos: np.ndarray = field(default_factory=lambda: np.zeros(_AUC_BINS, np.int64), repr=False)
    _neg: np.ndarray = field(default_factory=lambda: np.zeros(_AUC_BINS, np.int64), repr=False)
    _p_sum: float = field(default=0.0, repr=False)

    @property
    def ctr(self) -> float:
        return self.clicks / self.rows if self.rows else float("nan")

    def add(self, labels: np.ndarray, p_true: np.ndarray) -> None:
        bins = np.minimum((p_true * _AUC_BINS).astype(np.int64), _AUC_BINS - 1)
        self._pos += np.bincount(bins[labels == 1], minlength=_AUC_BINS)
        self._neg += np.bincount(bins[labels == 0], minlength=_AUC_BINS)
        self.rows += len(labels)
        self.clicks += int(labels.sum())
        self._p_sum += float(p_true.sum())

    def finish(self) -> None:
        self.mean_p_true = self._p_sum / self.rows
        neg_below = np.cumsum(self._neg) - self._neg
        pairs = self.clicks * (self.rows - self.clicks)
        wins = (self._pos * (neg_below + 0.5 * self._neg)).sum()
        self.auc_p_true = float(wins / pairs) if pairs else float("nan")

    def summary(self, options: SynthOptions) -> dict[str, object]:
        """What `REPORT_FILE` holds: the log's CTR and best AUC, and what made its rows."""
        return {
            "rows": self.rows,
            "clicks": self.clicks,
            "ctr": self.ctr,
            "mean_p_true": self.mean_p_true,
            "auc_p_true": self.auc_p_true,
            **_definition(options),
        }


def _definition(options: SynthOptions) -> dict[str, object]:
    """What a log's rows are a function of, as `REPORT_FILE` spells it (JSON's lists): the
    options and the planted world's own definition, which a later version may change."""
    columns = range(len(CATEGORICAL_COLUMNS))
    definition = {
        "world": options.world.value,
        "seed": options.seed,
        "model_seed": options.model_seed,
        "distinct": [options.distinct_of(c) for c in columns],
        "zipf": options.zipf_exponent,
        "missing_rate": options.missing_rate,
        "planted": {**asdict(options.spec), "category_ranks": CATEGORY_RANKS},
    }
    return json.loads(json.dumps(definition))


def is_written(options: SynthOptions) -> bool:
    """Whether `options.out` holds this very log (rows and definition), as a cache can ask
    before it writes again: a folder written by another version of a world is not."""
    if not (Path(options.out) / REPORT_FILE).exists():
        return False
    report = read_report(options.out)
    return report.get("rows") == options.rows and all(
        report.get(key) == value for key, value in _definition(options).items()
    )


def read_report(folder: str | os.PathLike[str]) -> dict[str, object]:
    """The summary `write_synthetic` left in `folder` (e.g. an eval split's best AUC)."""
    path = Path(folder) / REPORT_FILE
    if not path.exists():
        raise ConfigError(
            f"{path} not found: {folder} was not written by `recsys-data synth` (or by a "
            "version before reports); write it again to get one."
        )
    return json.loads(path.read_text())


def _to_numpy(table: pa.Table, column: str, dtype: type) -> np.ndarray:
    """A null-free numeric column as numpy, without the pandas import of Arrow's to_numpy."""
    array = table.column(column).combine_chunks()
    data = np.frombuffer(array.buffers()[1], dtype=dtype)
    return data[array.offset : array.offset + len(array)]


def _rows(model: PlantedModel, rows: int) -> Iterator[pa.Table]:
    for index in range(-(-rows // BLOCK_ROWS)):
        # The last block draws only the rows it needs (small logs stay fast); so the rows of a
        # log are a function of (seed, rows, ...), and not a prefix of a longer log's rows.
        yield model.block(index, min(BLOCK_ROWS, rows - index * BLOCK_ROWS))


def file_names(options: SynthOptions) -> list[str]:
    suffix = ".parquet" if options.format is OutputFormat.parquet else ".tsv"
    suffix += ".gz" if options.gzip else ""
    return [os.path.join(options.out, f"part-{i:05d}{suffix}") for i in range(options.files)]


def write_synthetic(options: SynthOptions) -> SynthReport:
    """Write the synthetic log described by `options` and its `REPORT_FILE`; return the report."""
    report = SynthReport(files=file_names(options))
    stream = RowStream(_rows(PlantedModel(options.draw()), options.rows))
    with tqdm(total=options.rows, unit="row", disable=not options.progress) as bar:
        for i, path in enumerate(report.files):
            rows = (i + 1) * options.rows // options.files - i * options.rows // options.files
            with atomic_path(path) as tmp:
                _write_file(stream, tmp, rows, options, report, bar)
            logger.info("wrote %s rows to %s", f"{rows:,}", path)
    report.finish()
    with atomic_path(os.path.join(options.out, REPORT_FILE)) as tmp:
        tmp.write_text(json.dumps(report.summary(options), indent=2) + "\n")
    return report


def _write_file(
    stream: RowStream,
    tmp: os.PathLike[str],
    rows: int,
    options: SynthOptions,
    report: SynthReport,
    bar: tqdm,
) -> None:
    """Write the next `rows` rows of `stream` to one file (Parquet with p_true, or TSV)."""
    if options.format is OutputFormat.parquet:
        writer = pq.ParquetWriter(tmp, PARQUET_SCHEMA, compression="zstd")
        chunk = options.row_group_rows
    else:
        sink = (
            pa.CompressedOutputStream(str(tmp), "gzip")
            if options.gzip
            else pa.OSFile(str(tmp), "wb")
        )
        write = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
        writer = pacsv.CSVWriter(sink, ARROW_SCHEMA, write_options=write)
        chunk = BLOCK_ROWS
    with writer:
        while rows > 0:
            table = stream.take(min(chunk, rows))
            report.add(_to_numpy(table, LABEL, np.int8), _to_numpy(table, P_TRUE, np.float64))
            if options.format is OutputFormat.parquet:
                writer.write_table(table, row_group_size=table.num_rows)
            else:
                writer.write_table(table.drop_columns([P_TRUE]))
            rows -= table.num_rows
            bar.update(table.num_rows)
    if options.format is OutputFormat.tsv:
        sink.close()
