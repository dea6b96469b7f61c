"""The plain-torch dense part: interaction, first-order term, feature dropout."""

from __future__ import annotations

import pytest
import torch

from recsys.model.head import DLRMHead, FastDropout, HeadConfig, pairwise_dot


def _config(**overrides) -> HeadConfig:
    base = dict(
        num_dense=2,
        num_sparse=3,
        embedding_dim=4,
        dense_arch=(8,),
        over_arch=(8,),
        first_order=True,
    )
    return HeadConfig(**{**base, **overrides})


def test_pairwise_dot_is_upper_triangle_of_gram() -> None:
    v = torch.randn(5, 4, 3)
    got = pairwise_dot(v)
    expected = torch.stack(
        [(v[:, i] * v[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4)], dim=1
    )
    torch.testing.assert_close(got, expected)


def test_pairwise_dot_gradient_is_exact_and_its_reused_buffer_stays_clean() -> None:
    """The backward writes the upper triangle into a buffer kept per shape: a second step
    with other gradients, and a step at another batch size, must not see the first's."""
    v = torch.randn(6, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pairwise_dot, (v,))

    def grads(vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x = vectors.detach().requires_grad_()
        pairs = [(x[:, i] * x[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5)]
        expected = torch.autograd.grad((torch.stack(pairs, 1) * weights).sum(), x)[0]
        got = torch.autograd.grad((pairwise_dot(x) * weights).sum(), x)[0]
        return got, expected

    for batch in (6, 6, 4, 6):
        got, expected = grads(torch.randn(batch, 5, 3), torch.randn(batch, 10))
        torch.testing.assert_close(got, expected)


def test_first_order_adds_per_feature_biases() -> None:
    head = DLRMHead(_config()).eval()
    dense, pooled = torch.randn(6, 2), torch.randn(6, 3 * 4)
    bias = torch.randn(6, 3)
    torch.testing.assert_close(
        head(dense, pooled, bias) - head(dense, pooled, torch.zeros(6, 3)), bias.sum(1)
    )


def test_feature_dropout_only_while_training() -> None:
    head = DLRMHead(_config(feature_dropout=(0.5, 0.0, 0.5)))
    dense, pooled, bias = torch.randn(400, 2), torch.randn(400, 3 * 4), torch.randn(400, 3)
    head.eval()
    torch.testing.assert_close(
        head(dense, pooled, bias), head(dense, pooled, bias)
    )  # deterministic
    head.train()
    kept_pooled, kept_bias = head.feature_dropout(pooled, bias)
    blank = (kept_pooled.view(400, 3, 4) == 0).all(-1)
    assert 0.4 < blank[:, 0].float().mean().item() < 0.6
    assert not blank[:, 1].any()  # rate 0: never blanked
    assert torch.equal(blank, kept_bias == 0)  # a blanked feature loses its bias too


def test_no_dense_features() -> None:
    head = DLRMHead(_config(num_dense=0)).eval()
    out = head(torch.zeros(3, 0), torch.randn(3, 3 * 4), None)
    assert out.shape == (3,)


def test_config_round_trip() -> None:
    config = _config(feature_dropout=(0.25, 0.0, 0.0), dropout=0.1)
    assert HeadConfig.from_dict(config.to_dict()) == config


def test_fast_dropout_keeps_the_share_and_the_mean_and_masks_the_gradient() -> None:
    torch.manual_seed(0)
    dropout = FastDropout(0.2)
    x = torch.full((2000, 501), 3.0, requires_grad=True)  # an odd count: a partial 64-bit draw
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.002  # 1M draws: sd 0.0004
    assert abs(y.mean().item() - 3.0) < 0.01  # unbiased: kept values are scaled up
    scale = 65536 / (65536 - round(0.2 * 65536))
    assert torch.allclose(y[kept], torch.tensor(3.0 * scale))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.tensor(scale))
    # Rows and columns get independent masks: no lane pattern repeats along either axis.
    assert kept.float().mean(dim=0).std() < 0.05 and kept.float().mean(dim=1).std() < 0.05


def test_fast_dropout_is_seeded_by_torch_and_off_in_eval() -> None:
    dropout = FastDropout(0.5)
    x = torch.randn(64, 32)
    torch.manual_seed(7)
    first = dropout(x)
    torch.manual_seed(7)
    assert torch.equal(dropout(x), first) and not torch.equal(first, x)
    assert torch.equal(dropout.eval()(x), x) and torch.equal(FastDropout(0.0)(x), x)
    with pytest.raises(ValueError, match="need 0 <= p < 1"):
        FastDropout(1.0)
