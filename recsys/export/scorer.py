"""Batch scoring from a serving export: raw records in, click probabilities out.

Needs torch, numpy and pyarrow only: no torchrec, no process group, no training code beyond
the shared featurizer (which is what makes serving hash ids exactly as training did) and the
plain-torch dense part.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from recsys.config import Pooling, Schema
from recsys.data.featurize import IN_MEMORY, FeatureArrays, RecordOrigin, featurize
from recsys.export.manifest import ExportError, Manifest
from recsys.model.head import DLRMHead, HeadConfig

log = logging.getLogger(__name__)


class Scorer:
    """Scores raw records with an exported model."""

    def __init__(self, export_dir: Path, verify: bool = True):
        export_dir = Path(export_dir)
        self.manifest = Manifest.load(export_dir)
        if verify:
            self.manifest.verify(export_dir)
        self.schema = self.manifest.schema
        # Memory-mapped: a serving box touches only the rows its ids hash to.
        self.tables = {
            n: np.load(export_dir / t["file"], mmap_mode="r")
            for n, t in self.manifest.tables.items()
        }
        self.biases = {
            n: np.load(export_dir / t["first_order"]["file"], mmap_mode="r")
            for n, t in self.manifest.tables.items()
            if t.get("first_order")
        }
        self.head = DLRMHead(HeadConfig.from_dict(self.manifest.dense["head_config"]))
        self.head.load_state_dict(
            torch.load(export_dir / self.manifest.dense["file"], weights_only=True)
        )
        self.head.eval()

    @torch.no_grad()
    def score(
        self, records: pa.Table | pa.RecordBatch, origin: RecordOrigin = IN_MEMORY
    ) -> np.ndarray:
        """Click probabilities (float64 [N]) for raw records, in input order."""
        arrays = featurize(records, self.schema, origin, with_labels=False)
        pooled = torch.stack(
            [self._pool(arrays, f.name, self.tables) for f in self.schema.sparse_features], dim=1
        )
        first_order = None
        if self.biases:
            bags = [self._pool(arrays, f.name, self.biases) for f in self.schema.sparse_features]
            first_order = torch.cat(bags, dim=1)
        logits = self.head(torch.from_numpy(arrays.dense), pooled, first_order)
        return torch.sigmoid(logits.double()).numpy()

    def _pool(
        self, arrays: FeatureArrays, feature: str, tables: dict[str, np.ndarray]
    ) -> torch.Tensor:
        table_name = next(f.table for f in self.schema.sparse_features if f.name == feature)
        table = tables[table_name]
        lengths = torch.from_numpy(arrays.lengths[feature].astype(np.int64))
        rows = torch.from_numpy(np.asarray(table[arrays.ids[feature]], dtype=np.float32))
        owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        pooled = torch.zeros(len(lengths), table.shape[1]).index_add_(0, owner, rows)
        if self.schema.table(table_name).pooling is Pooling.mean:
            pooled = pooled / lengths.clamp(min=1).unsqueeze(1)
        return pooled

    def score_file(self, input_path: Path, output_path: Path, batch_rows: int = 65536) -> int:
        """Stream INPUT (Parquet, CSV or TSV) to OUTPUT Parquet with one `score` per row."""
        output_path = Path(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([("score", pa.float64())])
        rows = 0
        with pq.ParquetWriter(output_path, schema) as writer:
            for batch in read_records(Path(input_path), batch_rows, self.schema):
                origin = RecordOrigin(str(input_path), rows)
                scores = self.score(batch, origin)
                writer.write_table(pa.table({"score": scores}, schema=schema))
                rows += batch.num_rows
        log.info("scored %d rows of %s -> %s", rows, input_path, output_path)
        return rows


def read_records(path: Path, batch_rows: int, schema: Schema) -> Iterator[pa.RecordBatch]:
    """Raw records from Parquet (.parquet / .pq), CSV (.csv) or TSV (.tsv / .txt), streamed.

    Text formats read id columns as text: type inference would turn the zip code "021" into
    the integer 21 and so hash it into another bucket than training did.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ExportError(f"input {path} does not exist.")
    if suffix in (".parquet", ".pq"):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
    elif suffix in (".csv", ".tsv", ".txt"):
        parse = pacsv.ParseOptions(delimiter="\t" if suffix != ".csv" else ",")
        read = pacsv.ReadOptions(block_size=1 << 24)
        id_columns = {f.column: pa.string() for f in schema.sparse_features}
        convert = pacsv.ConvertOptions(column_types=id_columns, strings_can_be_null=True)
        yield from pacsv.open_csv(
            path, read_options=read, parse_options=parse, convert_options=convert
        )
    else:
        raise ExportError(f"input {path}: unknown format {suffix!r}; use .parquet, .csv or .tsv.")
