"""DCNv2 head: cross-layer algebra, low rank vs full rank, shapes and gradients."""

from __future__ import annotations

import pytest
import torch

from recsys.model.dcn import CrossLayer, DCNConfig, DCNHead


def _config(**overrides) -> DCNConfig:
    base = dict(
        num_dense=2,
        embedding_dims=(4, 8, 4),  # unequal dims: DCN takes no dot products between them
        dense_arch=(),
        dense_out=4,
        cross_layers=2,
        low_rank=None,
        structure="stacked",
        over_arch=(8,),
        first_order=True,
    )
    return DCNConfig(**{**base, **overrides})


def test_cross_layer_is_x0_times_affine_plus_residual() -> None:
    layer = CrossLayer(5, low_rank=None)
    x0, x = torch.randn(7, 5), torch.randn(7, 5)
    expected = x0 * (x @ layer.up.weight.T + layer.up.bias) + x
    torch.testing.assert_close(layer(x0, x), expected)


def test_low_rank_cross_equals_full_rank_with_w_equal_u_v_transposed() -> None:
    low = CrossLayer(6, low_rank=2)
    full = CrossLayer(6, low_rank=None)
    with torch.no_grad():
        full.up.weight.copy_(low.up.weight @ low.down.weight)  # W = U V^T, [6, 2] @ [2, 6]
        full.up.bias.copy_(low.up.bias)
    x0, x = torch.randn(9, 6), torch.randn(9, 6)
    torch.testing.assert_close(low(x0, x), full(x0, x))
    assert sum(p.numel() for p in low.parameters()) == 6 * 2 * 2 + 6  # not 6 * 6 + 6


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
@pytest.mark.parametrize("dense_arch", [(), (8,)])
@pytest.mark.parametrize("low_rank", [None, 3])
def test_shapes_and_every_parameter_gets_a_gradient(structure, dense_arch, low_rank) -> None:
    config = _config(structure=structure, dense_arch=dense_arch, low_rank=low_rank)
    head = DCNHead(config)
    dense, embeddings, bias = torch.randn(5, 2), torch.randn(5, 16), torch.randn(5, 3)
    logits = head(dense, embeddings.requires_grad_(), bias)
    assert logits.shape == (5,)
    logits.sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert embeddings.grad.abs().sum(0).gt(0).all()  # every embedding column reaches the logit
    assert config.input_dim == (2 if not dense_arch else 4) + 16


def test_first_order_adds_per_feature_biases() -> None:
    head = DCNHead(_config()).eval()
    dense, embeddings, bias = torch.randn(6, 2), torch.randn(6, 16), torch.randn(6, 3)
    torch.testing.assert_close(
        head(dense, embeddings, bias) - head(dense, embeddings, torch.zeros(6, 3)), bias.sum(1)
    )


def test_no_dense_features_and_no_cross_layers() -> None:
    head = DCNHead(_config(num_dense=0, cross_layers=0, first_order=False)).eval()
    assert head(torch.zeros(3, 0), torch.randn(3, 16), None).shape == (3,)


def test_config_round_trip() -> None:
    config = _config(low_rank=4, structure="parallel", feature_dropout=(0.1, 0.0, 0.0))
    assert DCNConfig.from_dict(config.to_dict()) == config
