"""Arrow records -> model inputs, as plain numpy arrays.

This module is deliberately free of torch and torchrec: the serving scorer calls the very same
`featurize` on raw records, which is what guarantees that serving hashes ids exactly as
training did. `recsys.data.batch` turns the arrays into tensors for training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.config import DenseTransform, FeatureKind
from recsys.hashing import MISSING_BUCKET, hash_array, qr_split
from recsys.schema import LookupPart, ResolvedFeature, ResolvedLookup, Schema


class DataError(ValueError):
    """A record cannot be used; the message names the file, row, column and value."""


@dataclass(frozen=True)
class RecordOrigin:
    """Where a block of records came from, so errors can point at the file and row."""

    source: str = "<memory>"
    first_row: int = 0  # row number of the block's first record within `source`


IN_MEMORY = RecordOrigin()


@dataclass
class FeatureArrays:
    """One block of featurized records.

    Attributes:
        labels: float32 [B] of 0/1, or None when the records carry no label (scoring).
        dense: float32 [B, num_dense], in schema order.
        ids: per sparse feature, the flattened bucket ids of all rows (int64).
        lengths: per sparse feature, ids per row (int32 [B]); 1 for single-id features.
    """

    labels: np.ndarray | None
    dense: np.ndarray
    ids: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]

    @property
    def num_rows(self) -> int:
        return self.dense.shape[0]

    def row_slicer(self) -> RowSlicer:
        return RowSlicer(self)


class RowSlicer:
    """Cuts featurized rows [start, stop) out of one big block without copying the block.

    Featurizing (hashing above all) costs a fixed overhead per call and per column, so the
    loader featurizes whole read blocks at once and cuts batches out of them here; the id
    offsets of every key are computed once per block, not once per batch.
    """

    def __init__(self, arrays: FeatureArrays):
        self.arrays = arrays
        self.offsets = {
            k: np.concatenate([[0], np.cumsum(v, dtype=np.int64)])
            for k, v in arrays.lengths.items()
        }

    def take(self, start: int, stop: int) -> FeatureArrays:
        a = self.arrays
        return FeatureArrays(
            labels=None if a.labels is None else a.labels[start:stop],
            dense=a.dense[start:stop],
            ids={k: v[self.offsets[k][start] : self.offsets[k][stop]] for k, v in a.ids.items()},
            lengths={k: v[start:stop] for k, v in a.lengths.items()},
        )


def featurize(
    records: pa.Table | pa.RecordBatch,
    schema: Schema,
    origin: RecordOrigin = IN_MEMORY,
    with_labels: bool = True,
) -> FeatureArrays:
    """Hash, transform and check one block of records against the schema."""
    _check_columns(records, schema, origin, with_labels)
    dense = np.zeros((records.num_rows, len(schema.dense_features)), dtype=np.float32)
    for i, feature in enumerate(schema.dense_features):
        values = dense_values(records.column(feature.column), feature, origin)
        dense[:, i] = standardize(values, feature)
    ids: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    for feature in schema.sparse_features:
        column = records.column(feature.column)
        lookups = schema.lookups_of(feature.name)
        for key, (key_ids, key_lengths) in _sparse_column(column, feature, lookups, origin).items():
            ids[key], lengths[key] = key_ids, key_lengths
    labels = _labels(records.column(schema.label.column), schema, origin) if with_labels else None
    return FeatureArrays(labels=labels, dense=dense, ids=ids, lengths=lengths)


def _check_columns(
    records: pa.Table | pa.RecordBatch, schema: Schema, origin: RecordOrigin, with_labels: bool
) -> None:
    needed = schema.columns if with_labels else [f.column for f in schema.features]
    missing = [c for c in needed if c not in records.schema.names]
    if missing:
        raise DataError(
            f"{origin.source}: column(s) {missing} named by the data schema are not in the file "
            f"(it has {records.schema.names}). Fix the `column` of the feature in conf/data/, "
            f"or the file."
        )


def _labels(column: pa.Array | pa.ChunkedArray, schema: Schema, origin: RecordOrigin) -> np.ndarray:
    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    name = schema.label.column
    if schema.label.threshold is not None:
        bad = np.isnan(values)
        labels = values >= schema.label.threshold
    else:
        bad = ~np.isin(values, (0.0, 1.0))
        labels = values == 1.0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        hint = (
            ""
            if schema.label.threshold is not None
            else " (expected 0 or 1; set data.label.threshold to binarize)"
        )
        raise DataError(
            f"{origin.source}, row {origin.first_row + row}, column '{name}': label value "
            f"{column[row].as_py()!r} is not usable{hint}."
        )
    return labels.astype(np.float32)


DENSE_MISSING = 0.0
"""What a missing dense value (null; "" in text) is to the model, before clip and transform."""


def dense_values(
    column: pa.Array | pa.ChunkedArray, feature: ResolvedFeature, origin: RecordOrigin = IN_MEMORY
) -> np.ndarray:
    """A dense column as the model sees it before standardization: float64 [N].

    Missing values become DENSE_MISSING, then values are clipped to [clip_min, clip_max] and
    log1p'd (transform=log1p). Statistics suggest the feature's mean / std on exactly these
    values (`recsys.data.stats`), so standardizing with them gives mean 0 and std 1.
    """
    try:
        values = pc.cast(column, pa.float64()).fill_null(DENSE_MISSING)
        values = values.to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(
            f"{origin.source}, column '{feature.column}' (dense feature '{feature.name}'): "
            f"values are not numbers ({e}). Declare it as kind=id or fix the data."
        ) from e
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{origin.source}, row {origin.first_row + row}, column '{feature.column}': dense "
            f"value {values[row]} is not finite; it would turn the weights into NaN."
        )
    if feature.clip_min is not None or feature.clip_max is not None:
        values = np.clip(values, feature.clip_min, feature.clip_max)
    if feature.transform is DenseTransform.log1p:
        values = np.log1p(np.maximum(values, 0.0))
    return values


def standardize(values: np.ndarray, feature: ResolvedFeature) -> np.ndarray:
    """The model's dense input: (values - mean) / std of the feature, float32."""
    return ((values - feature.mean) / feature.std).astype(np.float32)


def _sparse_column(
    column: pa.Array | pa.ChunkedArray,
    feature: ResolvedFeature,
    lookups: tuple[ResolvedLookup, ...],
    origin: RecordOrigin,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Row ids and per-row lengths of each of the feature's lookups (KJT keys)."""
    if feature.kind is FeatureKind.id:
        ids = lookup_ids(column, lookups)
        return {key: (rows, np.ones(len(rows), dtype=np.int32)) for key, rows in ids.items()}
    column = id_lists(column, feature, origin)
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    ids = lookup_ids(pc.list_flatten(column), lookups)
    # A missing entry inside a list ("a||b", a null element) is no id: drop it from the bag.
    # Missing is row 0 in every lookup of the id alike, so one mask serves them all.
    keep = next(iter(ids.values())) != MISSING_BUCKET
    if not keep.all():
        row_of = np.repeat(np.arange(len(lengths)), lengths)
        lengths = lengths - np.bincount(row_of[~keep], minlength=len(lengths))
        ids = {key: rows[keep] for key, rows in ids.items()}
    return {key: (rows, lengths.astype(np.int32)) for key, rows in ids.items()}


def id_lists(
    column: pa.Array | pa.ChunkedArray, feature: ResolvedFeature, origin: RecordOrigin = IN_MEMORY
) -> pa.Array | pa.ChunkedArray:
    """An id list arrives as a list column (Parquet) or as delimited text (CSV, TSV)."""
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return column
    if (
        pa.types.is_string(kind) or pa.types.is_large_string(kind)
    ) and feature.delimiter is not None:
        return pc.split_pattern(column, feature.delimiter)
    raise DataError(
        f"{origin.source}, column '{feature.column}' (id_list feature '{feature.name}'): type "
        f"{kind} is neither a list nor text with a delimiter; set data.features.{feature.name}.delimiter "
        f"for delimited text."
    )


def lookup_ids(
    values: pa.Array | pa.ChunkedArray, lookups: tuple[ResolvedLookup, ...]
) -> dict[str, np.ndarray]:
    """Row ids (int64, 0 = missing) of every lookup of one feature's flat id column.

    Each distinct (seed, hash_buckets) is hashed once, whatever the number of lookups.
    """
    hashed: dict[tuple[int, int], np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for lk in lookups:
        rule = (lk.seed, lk.hash_buckets)
        if rule not in hashed:
            hashed[rule] = hash_array(values, lk.seed, lk.hash_buckets)
        buckets = hashed[rule]
        if lk.part is LookupPart.bucket:
            out[lk.key] = buckets
        else:
            quotient, remainder = qr_split(buckets, lk.divisor)
            out[lk.key] = quotient if lk.part is LookupPart.quotient else remainder
    return out
