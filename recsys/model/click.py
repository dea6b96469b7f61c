"""The click model: TorchRec embedding bags built from the schema, then a plain-torch head.

The model maps (dense, KeyedJaggedTensor) to logits and knows nothing of loss, optimizer,
device or process group; `recsys.train` wraps it. Which head is picked by `model.name` through
`recsys.model.registry`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from recsys.config import ModelConfig
from recsys.model.layout import WeightLayout
from recsys.model.registry import build_head, head_config
from recsys.model.sparse import SparseArch
from recsys.schema import Schema


class ClickModel(nn.Module):
    """Embedding bags (+ first-order tables) -> head (dlrm, dcn, mf, fm, lr) -> logits."""

    def __init__(self, schema: Schema, config: ModelConfig, device: torch.device | None = None):
        super().__init__()
        self.head_config = head_config(schema, config)
        self.sparse_arch = SparseArch(schema, config.first_order, device, config.bias_in_rows)
        self.head = build_head(self.head_config)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.forward_pooled(dense, sparse)[0]

    def forward_pooled(
        self, dense: torch.Tensor, sparse: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits, pooled embeddings, first-order weights): what a regularizer needs too."""
        embeddings, first_order = self.sparse_arch(sparse)
        return self.head(dense, embeddings, first_order), embeddings, first_order

    def weight_layout(self) -> WeightLayout:
        """Which state entries are which table, bias table and dense part (the head)."""
        sparse = self.sparse_arch.weight_layout().under("sparse_arch.")
        return replace(sparse, dense_prefix="head.")


def build_model(
    schema: Schema, config: ModelConfig, device: torch.device | None = None
) -> ClickModel:
    """The model named by `model.name` (tables on `device`; "meta" lets DMP place shards)."""
    return ClickModel(schema, config, device)
