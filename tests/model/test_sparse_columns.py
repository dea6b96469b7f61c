"""Cutting the pooled output into embedding vectors and biases (recsys.model.sparse)."""

from __future__ import annotations

import torch
from torchrec import KeyedTensor

from recsys.model.sparse import _columns, _vectors_and_biases

VECTORS = (("a", 0, None), ("b", 0, None))
BIASES = (("a_bias", 0, None), ("b_bias", 0, None))


def _pooled(keys: list[str], widths: list[int]) -> tuple[KeyedTensor, torch.Tensor]:
    values = torch.randn(5, sum(widths), requires_grad=True)
    return KeyedTensor(keys=keys, length_per_key=widths, values=values), values


def test_vectors_then_biases_are_split_and_their_gradients_concatenated() -> None:
    pooled, values = _pooled(["a", "b", "a_bias", "b_bias"], [3, 3, 2, 2])
    vectors, biases = _vectors_and_biases(pooled, VECTORS, BIASES)
    assert "Split" in type(vectors.grad_fn).__name__  # no slice: no zero-filled gradient
    torch.testing.assert_close(vectors, values[:, :6])
    torch.testing.assert_close(biases, values[:, 6:])
    (vectors.sum() + 2 * biases.sum()).backward()
    torch.testing.assert_close(values.grad, torch.tensor([1.0] * 6 + [2.0] * 4).expand(5, 10))


def test_any_other_layout_is_cut_column_by_column() -> None:
    pooled, values = _pooled(["a", "a_bias", "b", "b_bias"], [3, 2, 3, 2])  # interleaved
    vectors, biases = _vectors_and_biases(pooled, VECTORS, BIASES)
    torch.testing.assert_close(vectors, _columns(pooled, VECTORS))
    torch.testing.assert_close(vectors, torch.cat([values[:, 0:3], values[:, 5:8]], dim=1))
    torch.testing.assert_close(biases, torch.cat([values[:, 3:5], values[:, 8:10]], dim=1))
