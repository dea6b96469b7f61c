"""`Batch`: the one thing that passes from data to model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from recsys.config import FeatureKind, Schema
from recsys.data.featurize import FeatureArrays
from recsys.hashing import MISSING_BUCKET


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
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    weights: torch.Tensor
    row_ids: torch.Tensor

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
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
        return Batch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            labels=self.labels.pin_memory(),
            weights=self.weights.pin_memory(),
            row_ids=self.row_ids.pin_memory(),
        )

    @staticmethod
    def from_arrays(arrays: FeatureArrays, schema: Schema, row_ids: np.ndarray) -> Batch:
        names = [f.name for f in schema.sparse_features]
        n = arrays.num_rows
        labels = arrays.labels if arrays.labels is not None else np.zeros(n, np.float32)
        return Batch(
            dense=torch.from_numpy(arrays.dense),
            sparse=KeyedJaggedTensor(
                keys=names,
                values=torch.from_numpy(np.concatenate([arrays.ids[k] for k in names])),
                lengths=torch.from_numpy(np.concatenate([arrays.lengths[k] for k in names])),
            ),
            labels=torch.from_numpy(labels),
            weights=torch.ones(n, dtype=torch.float32),
            row_ids=torch.from_numpy(row_ids.astype(np.int64)),
        )

    @staticmethod
    def padding(schema: Schema, num_rows: int = 1) -> Batch:
        """A weight-0 batch for a rank that ran out of data while others still have some.

        Sharded embedding lookups are collectives: every rank must take part in every step,
        so an exhausted rank feeds this (all ids missing) and contributes nothing to the loss.
        """
        ids, lengths = {}, {}
        for f in schema.sparse_features:
            single = f.kind is FeatureKind.id
            ids[f.name] = np.full(num_rows if single else 0, MISSING_BUCKET, np.int64)
            lengths[f.name] = np.full(num_rows, 1 if single else 0, np.int32)
        arrays = FeatureArrays(
            labels=np.zeros(num_rows, np.float32),
            dense=np.zeros((num_rows, len(schema.dense_features)), np.float32),
            ids=ids,
            lengths=lengths,
        )
        batch = Batch.from_arrays(arrays, schema, row_ids=np.full(num_rows, -1))
        batch.weights.zero_()
        return batch
