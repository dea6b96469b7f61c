"""The train wrapper owns the loss; the model stays a pure (dense, sparse) -> logits map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.data.batch import Batch
from recsys.model.layout import WeightLayout


class ClickModelTrain(nn.Module):
    """Batch -> (loss, (loss, logits, labels)), the contract TorchRec's train pipelines expect.

    `embedding_l2` adds lambda * (sum over features of the squared pooled embedding and bias)
    averaged over the batch's rows: L2 on exactly the rows the batch touched, weighted by how
    often it touched them, as CTR models regularize embeddings (the fused sparse optimizers
    never see a dense gradient to decay, and FBGEMM's CPU kernels ignore weight decay).
    """

    def __init__(self, model: nn.Module, embedding_l2: float = 0.0):
        super().__init__()
        self.model = model
        self.embedding_l2 = embedding_l2

    def weight_layout(self) -> WeightLayout:
        """The wrapped model's layout, with its keys as this module's state dict names them."""
        return self.model.weight_layout().under("model.")

    def forward(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits, embeddings, first_order = self.model.forward_pooled(batch.dense, batch.sparse)
        per_row = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
        # Weighted mean; clamp so an all-padding batch gives loss 0 (and zero gradients).
        total_weight = batch.weights.sum().clamp(min=1.0)
        loss = (per_row * batch.weights).sum() / total_weight
        if self.embedding_l2 > 0:
            squares = embeddings.square().sum(dim=1)
            if first_order is not None:
                squares = squares + first_order.square().sum(dim=1)
            penalty = self.embedding_l2 * (squares * batch.weights).sum() / total_weight
            return loss + penalty, (loss.detach(), logits.detach(), batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)
