"""The train wrapper's loss: weighted log loss, plus L2 on the rows a batch touched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys.train.wrapper import ClickModelTrain


class PooledOnly(nn.Module):
    """A model whose pooled rows are parameters, so their gradient can be read."""

    def __init__(self, embeddings: torch.Tensor, first_order: torch.Tensor):
        super().__init__()
        self.embeddings = nn.Parameter(embeddings)
        self.first_order = nn.Parameter(first_order)

    def forward_pooled(self, dense, sparse):
        logits = self.embeddings.sum(dim=1) + self.first_order.sum(dim=1)
        return logits, self.embeddings, self.first_order


class FakeBatch:
    def __init__(self, labels: torch.Tensor, weights: torch.Tensor):
        self.dense, self.sparse, self.labels, self.weights = None, None, labels, weights


def _batch() -> FakeBatch:
    # The last row is padding (weight 0): neither its loss nor its rows may count.
    return FakeBatch(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0]))


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_loss_is_log_loss_plus_l2_on_real_rows(l2: float) -> None:
    torch.manual_seed(0)
    model = PooledOnly(torch.randn(3, 4), torch.randn(3, 2))
    loss, (logged, logits, _) = ClickModelTrain(model, l2)(_batch())
    real = slice(0, 2)
    log_loss = F.binary_cross_entropy_with_logits(logits[real], torch.tensor([1.0, 0.0]))
    squares = model.embeddings[real].square().sum() + model.first_order[real].square().sum()
    assert logged.item() == pytest.approx(log_loss.item(), rel=1e-6)  # metrics: no penalty
    assert loss.item() == pytest.approx((log_loss + l2 * squares / 2).item(), rel=1e-6)


def test_l2_pulls_the_touched_rows_toward_zero() -> None:
    embeddings = torch.full((3, 4), 0.5)
    plain, regularized = (PooledOnly(embeddings.clone(), torch.zeros(3, 2)) for _ in range(2))
    ClickModelTrain(plain, 0.0)(_batch())[0].backward()
    ClickModelTrain(regularized, 1.0)(_batch())[0].backward()
    extra = regularized.embeddings.grad - plain.embeddings.grad
    # d/dw of 1.0 * sum(w^2) / 2 rows = w on each real row; nothing on the padding row.
    torch.testing.assert_close(extra[:2], embeddings[:2])
    assert torch.all(extra[2] == 0)
