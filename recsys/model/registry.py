"""Model name -> head: the one place that maps each `model.name` (a `ModelName`) to its head.

Every model is the shared sparse part (`recsys.model.sparse`) followed by a plain-torch head;
a head is fully described by its config, which the export saves beside its weights. Training
builds the config from the schema (`head_config`), serving from the manifest (`build_head`).
Adding a model is a `ModelName` member and one entry here. No torchrec: the serving scorer
imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from recsys.config import ConfigError, ModelConfig, ModelName
from recsys.model.dcn import DCNConfig, DCNHead
from recsys.model.fm import FMConfig, FMHead, LinearConfig, LinearHead
from recsys.model.head import DLRMHead, HeadConfig
from recsys.model.mf import MFConfig, MFHead
from recsys.schema import Schema


class AnyHeadConfig(Protocol):
    architecture: str
    first_order: bool

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Architecture:
    config: type  # from_model(schema, ModelConfig), from_dict(dict), to_dict()
    head: type[nn.Module]  # head(config)


ARCHITECTURES: dict[ModelName, Architecture] = {
    ModelName.dlrm: Architecture(HeadConfig, DLRMHead),
    ModelName.dcn: Architecture(DCNConfig, DCNHead),
    ModelName.mf: Architecture(MFConfig, MFHead),
    ModelName.fm: Architecture(FMConfig, FMHead),
    ModelName.lr: Architecture(LinearConfig, LinearHead),
}


def head_config(schema: Schema, config: ModelConfig) -> AnyHeadConfig:
    """The head config of model `config.name` for this schema; errors name the config key."""
    if config.name not in ARCHITECTURES:
        raise ConfigError(
            f"model.name={config.name!r} is not a known model; use model=<name> with one of "
            f"{sorted(a.value for a in ARCHITECTURES)}."
        )
    return ARCHITECTURES[config.name].config.from_model(schema, config)


def build_head(config: AnyHeadConfig) -> nn.Module:
    return ARCHITECTURES[config.architecture].head(config)


def head_config_from_dict(architecture: str, d: dict[str, Any]) -> AnyHeadConfig:
    """Rebuild a saved head config (the export manifest's `dense` section)."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"architecture {architecture!r} is not one this version of recsys knows "
            f"({sorted(a.value for a in ARCHITECTURES)}); score with the recsys version that exported it."
        )
    return ARCHITECTURES[architecture].config.from_dict(d)
