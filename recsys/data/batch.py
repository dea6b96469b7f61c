"""`Batch`: the one thing that passes from data to model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from recsys.config import FeatureKind
from recsys.data.featurize import FeatureArrays
from recsys.data.progress import BatchPosition
from recsys.hashing import MISSING_BUCKET
from recsys.schema import Schema


@dataclass
class Batch(Pipelineable):
    """A block of training examples, as tensors.

    Attributes:
        dense: float32 [B, num_dense] dense features, in schema order.
        sparse: bucket ids of every sparse feature, keyed by feature name, in schema order.
        labels: float32 [B] click labels (0/1).
        weights: float32 [B] example weights: 1 for real rows, 0 for padding rows that keep
            ranks in lockstep when one runs out of data before the others.
        row_ids: int64 [B] each row's position in the dataset (for predictions files).
        bad_rows: rows skipped by data.on_bad_row=skip, by reason, reported with this batch.
        rows_padded: rows read with missing trailing fields added (Criteo), reported alike.
        position: where the batch comes from, for `EpochProgress.record`; None for padding.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    weights: torch.Tensor
    row_ids: torch.Tensor
    bad_rows: dict[str, int] = field(default_factory=dict)
    rows_padded: int = 0
    position: BatchPosition | None = None

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return replace(
            self,
            dense=self.dense.to(device, non_blocking=non_blocking),
            sparse=self.sparse.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            weights=self.weights.to(device, non_blocking=non_blocking),
            row_ids=self.row_ids.to(device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        for t in (self.dense, self.labels, self.weights, self.row_ids):
            t.record_stream(stream)
        self.sparse.record_stream(stream)

    def pin_memory(self) -> Batch:
        return replace(
            self,
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            labels=self.labels.pin_memory(),
            weights=self.weights.pin_memory(),
            row_ids=self.row_ids.pin_memory(),
        )

    @property
    def real_rows(self) -> torch.Tensor:
        """Mask of the rows that carry data; the others (row id -1, weight 0) are padding."""
        return self.row_ids >= 0

    @property
    def num_real_rows(self) -> int:
        return int(self.real_rows.sum())

    @staticmethod
    def from_arrays(
        arrays: FeatureArrays, schema: Schema, row_ids: np.ndarray, size: int | None = None
    ) -> Batch:
        """Tensors from featurized rows, padded with weight-0 rows up to `size` rows.

        Every batch of a run has the same size: row-wise sharded lookups reduce-scatter their
        output over ranks, which needs equal batch sizes on all ranks at every step. Padding
        rows have no ids, weight 0 and row id -1, so loss, metrics and predictions skip them.
        """
        n = arrays.num_rows
        size = n if size is None else size
        if size < n:
            raise ValueError(f"batch of {n} rows does not fit size {size}")
        if arrays.labels is None:
            arrays = replace(arrays, labels=np.zeros(n, np.float32))
        if size > n:
            arrays = _concat(arrays, _padding_arrays(schema, size - n))
        names = schema.lookup_keys  # one KJT key per lookup (several per feature: double, qr)
        weights = np.zeros(size, np.float32)
        weights[:n] = 1.0
        padded_row_ids = np.full(size, -1, np.int64)
        padded_row_ids[:n] = row_ids
        # Copies, never views: a view would keep (and send to other processes) the whole
        # featurized block it was cut from.
        return Batch(
            dense=torch.from_numpy(np.array(arrays.dense, copy=True)),
            sparse=KeyedJaggedTensor(
                keys=names,
                values=torch.from_numpy(np.concatenate([arrays.ids[k] for k in names])),
                lengths=torch.from_numpy(np.concatenate([arrays.lengths[k] for k in names])),
            ),
            labels=torch.from_numpy(np.array(arrays.labels, copy=True)),
            weights=torch.from_numpy(weights),
            row_ids=torch.from_numpy(padded_row_ids),
        )

    @staticmethod
    def padding(schema: Schema, size: int = 1) -> Batch:
        """An all-padding batch for a rank that ran out of data while others still have some.

        Sharded embedding lookups are collectives: every rank must take part in every step,
        so an exhausted rank feeds this (all ids missing) and contributes nothing to the loss.
        """
        return Batch.from_arrays(_padding_arrays(schema, 0), schema, np.zeros(0, np.int64), size)


def _padding_arrays(schema: Schema, num_rows: int) -> FeatureArrays:
    ids, lengths = {}, {}
    kinds = {f.name: f.kind for f in schema.sparse_features}
    for lookup in schema.lookups:
        single = kinds[lookup.feature] is FeatureKind.id
        ids[lookup.key] = np.full(num_rows if single else 0, MISSING_BUCKET, np.int64)
        lengths[lookup.key] = np.full(num_rows, 1 if single else 0, np.int32)
    return FeatureArrays(
        labels=np.zeros(num_rows, np.float32),
        dense=np.zeros((num_rows, len(schema.dense_features)), np.float32),
        ids=ids,
        lengths=lengths,
    )


def _concat(a: FeatureArrays, b: FeatureArrays) -> FeatureArrays:
    return FeatureArrays(
        labels=np.concatenate([a.labels, b.labels]),
        dense=np.concatenate([a.dense, b.dense]),
        ids={k: np.concatenate([v, b.ids[k]]) for k, v in a.ids.items()},
        lengths={k: np.concatenate([v, b.lengths[k]]) for k, v in a.lengths.items()},
    )
