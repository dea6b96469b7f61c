"""Batch scoring from a serving export: raw records in, click probabilities out.

Needs torch, numpy and pyarrow only: no torchrec, no process group, no training code beyond
the shared read path and featurizer (which is what makes serving read and hash records exactly
as training did) and the plain-torch dense part.

Records are read as the training data was laid out (the manifest's `source`: Parquet, CSV, TSV
or Criteo, header or not), never guessed from a file name; `input_format` may override it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys.config import ConfigError, DataFormat, OnBadRow, Pooling, Tower
from recsys.data.featurize import IN_MEMORY, FeatureArrays, RecordOrigin, featurize
from recsys.data.reader import RowReader
from recsys.data.rowcheck import BadRowLog
from recsys.data.source import SourceFormat, UnitError
from recsys.export.delta import apply_deltas
from recsys.export.manifest import MANIFEST_FILE, ExportError, Manifest, Remap, load_dense
from recsys.export.quantize import FloatRows, Rows, load_rows
from recsys.model.combine import combine_pooled
from recsys.model.registry import build_head, head_config_from_dict
from recsys.schema import ResolvedLookup, Schema

log = logging.getLogger(__name__)


class Scorer:
    """Scores raw records with an exported model: a full export, or a full export and the
    delta exports written after it, in order (`recsys.export.delta`)."""

    def __init__(self, export_dir: Path, verify: bool = True, deltas: Sequence[Path] = ()):
        export_dir = Path(export_dir)
        self.manifest = Manifest.load(export_dir)
        if verify:
            self.manifest.verify(export_dir)
        self.schema = self.manifest.schema
        # Memory-mapped: a serving box touches only the rows its ids hash to, and fp16 / int8
        # tables decode only the rows a batch gathers (recsys.export.quantize).
        self.tables: dict[str, Rows] = {
            n: load_rows(export_dir, t) for n, t in self.manifest.tables.items()
        }
        self.biases: dict[str, Rows] = {
            n: load_rows(export_dir, t["first_order"])
            for n, t in self.manifest.tables.items()
            if t.get("first_order")
        }
        # Managed tables: hashed id -> row, as the trained remap left it (unseen ids included).
        self.remaps: dict[str, Remap] = {
            n: Remap.load(export_dir, t["remap"])
            for n, t in self.manifest.tables.items()
            if t.get("remap")
        }
        dense = export_dir / self.manifest.dense["file"]
        if deltas:  # the deltas' rows over the base's, in memory; their remaps and dense part
            patched = apply_deltas(
                export_dir, self.manifest, deltas, self.tables, self.biases, verify
            )
            self.tables, self.biases, dense = patched.tables, patched.biases, patched.dense
            self.remaps = {n: Remap.load(*where) for n, where in patched.remaps.items()}
        self.head = build_head(_head_config(self.manifest))
        self.head.load_state_dict(load_dense(dense))
        self.head.eval()

    def with_tables(
        self, tables: dict[str, np.ndarray], biases: dict[str, np.ndarray] | None = None
    ) -> Scorer:
        """This scorer (same schema and dense part) over other tables of the same shapes, e.g.
        the float32 weights a quantized export was made from, to measure what it changed."""
        other = copy.copy(self)
        other.tables = _same_shapes(self.tables, tables, "table")
        other.biases = _same_shapes(self.biases, biases or {}, "first-order table")
        return other

    @torch.no_grad()
    def score(
        self, records: pa.Table | pa.RecordBatch, origin: RecordOrigin = IN_MEMORY
    ) -> np.ndarray:
        """Click probabilities (float64 [N]) for raw records, in input order."""
        logits = self.head(*self._inputs(records, self.schema, origin))
        return torch.sigmoid(logits.double()).numpy()

    def _inputs(
        self, records: pa.Table | pa.RecordBatch, schema: Schema, origin: RecordOrigin
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A head's inputs (dense, concatenated embeddings, first-order) for `schema`'s features."""
        arrays = featurize(records, schema, origin, with_labels=False)
        sparse = schema.sparse_features
        embeddings = torch.cat([self._pool(arrays, f.name, self.tables) for f in sparse], dim=1)
        first_order = None
        if self.biases:
            first_order = torch.cat([self._pool(arrays, f.name, self.biases) for f in sparse], 1)
        return torch.from_numpy(arrays.dense), embeddings, first_order

    @torch.no_grad()
    def tower(
        self, records: pa.Table | pa.RecordBatch, side: Tower, origin: RecordOrigin = IN_MEMORY
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two-tower (model=mf) vectors float32 [N, D] and biases float64 [N] of one side,
        from records holding only that side's columns. For a user u and an item i,
        logit = <u_vector, i_vector> + u_bias + i_bias (the item bias carries the global bias),
        so items can be ranked for a user by <u_vector, i_vector> + i_bias.
        """
        side = Tower(side)
        head = self._two_tower_head()
        sub_schema = _tower_schema(self.schema, side)
        vectors, biases = head.tower(side.value, *self._inputs(records, sub_schema, origin))
        if side is Tower.item:
            biases = biases + head.global_bias
        return vectors.numpy(), biases.double().numpy()

    def _two_tower_head(self) -> torch.nn.Module:
        if not hasattr(self.head, "tower"):
            raise ExportError(
                f"this export's model is {self.manifest.dense['architecture']}; user and item "
                f"vectors exist only for a two-tower model (train with model=mf)."
            )
        return self.head

    def user_vectors(self, records: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        return self.tower(records, Tower.user)

    def item_vectors(self, records: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        return self.tower(records, Tower.item)

    def _pool(self, arrays: FeatureArrays, feature: str, tables: dict[str, Rows]) -> torch.Tensor:
        """The feature's pooled vector: its lookups (one, or two under double / qr hashing)
        pooled from their physical tables and combined as in training."""
        lookups = self.schema.lookups_of(feature)
        pooled = {lk.key: self._pool_lookup(arrays, lk, tables[lk.table]) for lk in lookups}
        first_order = tables is self.biases  # biases of several lookups are always summed
        return combine_pooled(pooled, list(pooled), lookups[0].combine, first_order)

    def _pool_lookup(
        self, arrays: FeatureArrays, lookup: ResolvedLookup, table: Rows
    ) -> torch.Tensor:
        lengths = torch.from_numpy(arrays.lengths[lookup.key].astype(np.int64))
        ids = arrays.ids[lookup.key]
        if lookup.table in self.remaps:
            ids = self.remaps[lookup.table](ids)
        rows = torch.from_numpy(table[ids])
        owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        pooled = torch.zeros(len(lengths), table.shape[1]).index_add_(0, owner, rows)
        if self.schema.table(lookup.table).pooling is Pooling.mean:
            pooled = pooled / lengths.clamp(min=1).unsqueeze(1)
        return pooled

    def score_file(
        self,
        input_path: str | Path,
        output_path: Path,
        batch_rows: int = 65536,
        input_format: DataFormat | None = None,
    ) -> int:
        """Stream INPUT (file, folder, glob or URI) to OUTPUT Parquet, one `score` per row."""
        output_path = Path(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([("score", pa.float64())])
        fmt = records_format(self.manifest.source, str(input_path), input_format)
        rows = 0
        with pq.ParquetWriter(output_path, schema) as writer:
            for batch in read_records(str(input_path), fmt, self.schema, batch_rows):
                origin = RecordOrigin(str(input_path), rows)
                scores = self.score(batch, origin)
                writer.write_table(pa.table({"score": scores}, schema=schema))
                rows += batch.num_rows
        log.info("scored %d rows of %s -> %s", rows, input_path, output_path)
        return rows

    def tower_file(
        self,
        input_path: str | Path,
        output_path: Path,
        side: Tower,
        batch_rows: int = 65536,
        input_format: DataFormat | None = None,
    ) -> int:
        """Stream INPUT to OUTPUT Parquet with one `vector` and `bias` per row, in input order."""
        dim = self._two_tower_head().config.embedding_dim
        schema = pa.schema([("vector", pa.list_(pa.float32(), dim)), ("bias", pa.float64())])
        sub_schema = _tower_schema(self.schema, Tower(side))
        fmt = records_format(self.manifest.source, str(input_path), input_format)
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
        rows = 0
        with pq.ParquetWriter(output_path, schema) as writer:
            for batch in read_records(str(input_path), fmt, sub_schema, batch_rows):
                vectors, biases = self.tower(batch, side, RecordOrigin(str(input_path), rows))
                flat = pa.array(vectors.reshape(-1), pa.float32())
                columns = {"vector": pa.FixedSizeListArray.from_arrays(flat, dim), "bias": biases}
                writer.write_table(pa.table(columns, schema=schema))
                rows += batch.num_rows
        log.info("%s vectors of %d rows of %s -> %s", side, rows, input_path, output_path)
        return rows


def _same_shapes(
    stored: dict[str, Rows], given: dict[str, np.ndarray], what: str
) -> dict[str, Rows]:
    if set(given) != set(stored):
        raise ValueError(f"{what}s {sorted(given)} are not the export's {sorted(stored)}.")
    for name, array in given.items():
        if tuple(array.shape) != stored[name].shape:
            raise ValueError(
                f"{what} {name!r}: shape {tuple(array.shape)} is not the export's "
                f"{stored[name].shape}."
            )
    return {name: FloatRows(np.asarray(array, dtype=np.float32)) for name, array in given.items()}


def _head_config(manifest: Manifest):
    try:
        return head_config_from_dict(manifest.dense["architecture"], manifest.dense["head_config"])
    except ConfigError as e:
        raise ExportError(f"{MANIFEST_FILE}: {e}") from e


def _tower_schema(schema: Schema, side: Tower) -> Schema:
    """The schema restricted to one tower's features (and the tables they use)."""
    # restrict() keeps each feature's lookups and physical tables (double / qr hashing).
    return schema.restrict({f.name for f in schema.features if f.tower is side})


def read_records(
    path: str, fmt: SourceFormat, schema: Schema, batch_rows: int
) -> Iterator[pa.Table]:
    """Raw records of `schema`'s feature columns, read as training read them
    (`recsys.data.reader`), at most `batch_rows` at a time, in input order.

    Any bad row is an error naming its file and row, whatever data.on_bad_row said in
    training: a dropped row would shift every score after it onto the wrong record.
    """
    try:
        fmt = replace(fmt, on_bad_row=OnBadRow.fail)
        reader = RowReader(path, fmt, schema, with_labels=False)
        for block in reader.rows(BadRowLog(skip=False), batch_rows):
            for start in range(0, block.num_rows, batch_rows):
                yield block.slice(start, batch_rows)
    except UnitError as e:  # a whole file unusable: perhaps not in the format it was read as
        formats = "|".join(f.value for f in DataFormat)
        raise UnitError(
            f"{e} (Read as {fmt.format.value}; for records in another format pass "
            f"recsys-score --format {formats}.)",
            e.reason,
            e.rows,
        ) from e


def records_format(
    recorded: SourceFormat | None, input_path: str, override: DataFormat | str | None = None
) -> SourceFormat:
    """How to read raw records: as the training data was laid out (`recorded`, from the
    manifest), or in `override`'s format, keeping the recorded header and columns of CSV / TSV
    (Criteo's fixed layout is not kept: other text has a header line unless recorded so)."""
    if recorded is None:
        recorded = _legacy_format(input_path) if override is None else SourceFormat()
    if override is None:
        return recorded
    if recorded.format is DataFormat.criteo:
        recorded = SourceFormat()
    return replace(recorded, format=DataFormat(override))


_LEGACY_SUFFIXES = {".csv": DataFormat.csv, ".tsv": DataFormat.tsv, ".txt": DataFormat.tsv}


def _legacy_format(path: str) -> SourceFormat:
    """Exports written before the manifest recorded the source format: the rule they were
    written under (Parquet, or CSV / TSV with a header line by file name), with a warning."""
    suffix = Path(path).suffix.lower()
    fmt = SourceFormat(format=_LEGACY_SUFFIXES.get(suffix, DataFormat.parquet))
    log.warning(
        "the export's manifest does not record the training data's format (exported by an "
        "older recsys): reading %s as %s by its file name; pass --format to choose.",
        path,
        fmt.format.value,
    )
    return fmt
