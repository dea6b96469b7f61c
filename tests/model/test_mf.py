"""Two-tower MF head: towers see only their own side; logit = <u, v> + biases."""

from __future__ import annotations

import pytest
import torch

from recsys.compose import load_config
from recsys.config import ConfigError
from recsys.model.mf import MFConfig, MFHead
from recsys.model.registry import head_config
from recsys.schema import resolve_schema

# sparse features: user, item, user, item; dense: user, item, user
TOWERS = dict(sparse_towers=("user", "item", "user", "item"), dense_towers=("user", "item", "user"))


def _head(first_order: bool = True) -> MFHead:
    config = MFConfig(num_dense=3, embedding_dim=4, first_order=first_order, **TOWERS)
    head = MFHead(config).eval()
    with torch.no_grad():
        head.global_bias.fill_(0.3)  # non-zero so the test sees whether it is added
    return head


def test_logit_is_dot_of_towers_plus_biases() -> None:
    head = _head()
    dense, pooled, bias = torch.randn(6, 3), torch.randn(6, 4, 4), torch.randn(6, 4)
    user, user_bias = head.tower(
        "user", dense[:, [0, 2]], pooled[:, [0, 2]].flatten(1), bias[:, [0, 2]]
    )
    item, item_bias = head.tower(
        "item", dense[:, [1]], pooled[:, [1, 3]].flatten(1), bias[:, [1, 3]]
    )
    expected = (user * item).sum(1) + user_bias + item_bias + 0.3
    torch.testing.assert_close(head(dense, pooled.flatten(1), bias), expected)
    # The user vector is the sum of the user side's embeddings plus a map of its dense values.
    dense_map = head.dense_maps["user"](dense[:, [0, 2]])
    torch.testing.assert_close(user, pooled[:, 0] + pooled[:, 2] + dense_map)
    dense_bias = head.dense_bias["user"](dense[:, [0, 2]]).squeeze(-1)
    torch.testing.assert_close(user_bias, bias[:, 0] + bias[:, 2] + dense_bias)


def test_towers_are_independent_of_the_other_side() -> None:
    head = _head()
    dense, pooled, bias = torch.randn(6, 3), torch.randn(6, 4, 4), torch.randn(6, 4)
    base = head(dense, pooled.flatten(1), bias)
    changed = pooled.clone()
    changed[:, 1] += 1.0  # an item feature
    user, _ = head.tower("user", *head.split("user", dense, changed, bias)[1:])
    user0, _ = head.tower("user", *head.split("user", dense, pooled, bias)[1:])
    torch.testing.assert_close(user, user0)
    assert not torch.allclose(head(dense, changed.flatten(1), bias), base)


def test_gradients_reach_every_parameter_and_embedding() -> None:
    head = MFHead(MFConfig(num_dense=3, embedding_dim=4, first_order=True, **TOWERS))
    embeddings = torch.randn(5, 16, requires_grad=True)
    head(torch.randn(5, 3), embeddings, torch.randn(5, 4)).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert embeddings.grad.abs().sum(0).gt(0).all()


def test_without_first_order_there_are_no_per_side_biases() -> None:
    head = _head(first_order=False)
    assert len(head.dense_bias) == 0
    _, biases = head.tower("item", torch.randn(2, 1), torch.randn(2, 8), None)
    torch.testing.assert_close(biases, torch.zeros(2))


def test_config_round_trip() -> None:
    config = MFConfig(num_dense=3, embedding_dim=4, first_order=True, **TOWERS)
    assert MFConfig.from_dict(config.to_dict()) == config


def test_movielens_schema_declares_every_tower() -> None:
    cfg = load_config(["model=mf"])
    config = head_config(resolve_schema(cfg.data, cfg.model.embedding_dim), cfg.model)
    assert config.sparse_towers.count("item") == 3 and config.dense_towers == (
        "user",
        "user",
        "item",
    )


def test_missing_tower_names_the_config_key() -> None:
    cfg = load_config(["model=mf", "data.features.genres.tower=null"])
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    with pytest.raises(ConfigError, match=r"data\.features\.genres\.tower"):
        head_config(schema, cfg.model)


def test_unknown_model_lists_the_known_ones() -> None:
    cfg = load_config([])
    schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
    cfg.model.name = "ffm"  # Hydra refuses it at composition; a config built in Python may not
    with pytest.raises(
        ConfigError, match=r"model\.name='ffm'.*\['dcn', 'dlrm', 'fm', 'lr', 'mf'\]"
    ):
        head_config(schema, cfg.model)
