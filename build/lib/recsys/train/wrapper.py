"""The train wrapper owns the loss; the model stays a pure (dense, sparse) -> logits map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.data.batch import Batch
from recsys.model.layout import WeightLayout


class ClickModelTrain(nn.Module):
    """Batch -> (loss, (loss, logits, labels)), the contract TorchRec's train pipelines expect."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def weight_layout(self) -> WeightLayout:
        """The wrapped model's layout, with its keys as this module's state dict names them."""
        return self.model.weight_layout().under("model.")

    def forward(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch.dense, batch.sparse)
        per_row = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
        # Weighted mean; clamp so an all-padding batch gives loss 0 (and zero gradients).
        loss = (per_row * batch.weights).sum() / batch.weights.sum().clamp(min=1.0)
        return loss, (loss.detach(), logits.detach(), batch.labels)
