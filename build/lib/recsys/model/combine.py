"""One vector per feature from its lookups' pooled embeddings (plain torch: serving uses it).

A plain feature has one lookup and its pooled embedding passes through untouched; double
hashing and the quotient-remainder trick give two, joined as the schema says.
"""

from __future__ import annotations

import torch

from recsys.config import Combine
from recsys.schema import Schema


def feature_lookups(schema: Schema) -> list[tuple[list[str], Combine]]:
    """Per sparse feature (schema order): its lookup keys and how they combine."""
    out = []
    for feature in schema.sparse_features:
        lookups = schema.lookups_of(feature.name)
        out.append(([lk.key for lk in lookups], lookups[0].combine))
    return out


def combine_pooled(
    pooled: dict[str, torch.Tensor], keys: list[str], combine: Combine, first_order: bool = False
) -> torch.Tensor:
    """The feature's vector from its lookups' pooled [B, D] embeddings.

    First-order biases are always summed: a product of two zero-initialised biases would
    have zero gradient forever.
    """
    if len(keys) == 1:
        return pooled[keys[0]]
    if combine is Combine.product and not first_order:
        out = pooled[keys[0]]
        for key in keys[1:]:
            out = out * pooled[key]
        return out
    return torch.stack([pooled[key] for key in keys]).sum(dim=0)
