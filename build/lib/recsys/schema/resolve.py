"""`resolve_schema`: the typed `DataConfig` -> the resolved `Schema`, checked once.

Errors name the offending `data.*` key and what to do.
"""

from __future__ import annotations

from recsys.config import ConfigError, DataConfig, FeatureKind, FeatureSpec, TableSpec
from recsys.schema.expand import expand_tables
from recsys.schema.resolved import ResolvedFeature, ResolvedTable, Schema


def resolve_schema(data: DataConfig, default_dim: int) -> Schema:
    """Fill defaults and check the schema; errors name the offending `data.*` key."""
    if not data.features:
        raise ConfigError("data.features is empty: declare at least one feature in conf/data/.")
    features = tuple(_resolve_feature(name, spec) for name, spec in data.features.items())
    if not any(f.kind is not FeatureKind.dense for f in features):
        raise ConfigError(
            "data.features has no sparse (id / id_list) feature; the model needs one."
        )
    users: dict[str, list[str]] = {}
    for f in features:
        if f.table is not None:
            users.setdefault(f.table, []).append(f.name)
    for name in data.tables:
        if name not in users:
            raise ConfigError(
                f"data.tables.{name} is fed by no feature; remove it or point a feature's `table` at it."
            )
    tables = tuple(
        _resolve_table(name, data.tables.get(name), fs, default_dim) for name, fs in users.items()
    )
    physical, lookups = expand_tables(tables, data.tables, features)
    return Schema(label=data.label, features=features, tables=physical, lookups=lookups)


def _resolve_feature(name: str, spec: FeatureSpec) -> ResolvedFeature:
    dense = spec.kind is FeatureKind.dense
    if dense and spec.table is not None:
        raise ConfigError(f"data.features.{name}: a dense feature feeds no table; drop `table`.")
    if spec.delimiter is not None and spec.kind is not FeatureKind.id_list:
        raise ConfigError(f"data.features.{name}: `delimiter` only applies to kind=id_list.")
    if spec.std <= 0:
        raise ConfigError(f"data.features.{name}.std={spec.std}: must be > 0.")
    _check_clip(name, spec, dense)
    if not 0.0 <= spec.dropout < 1.0 or (dense and spec.dropout):
        raise ConfigError(
            f"data.features.{name}.dropout={spec.dropout}: need 0 <= dropout < 1, sparse features only."
        )
    return ResolvedFeature(
        name=name,
        kind=spec.kind,
        column=spec.column or name,
        table=None if dense else (spec.table or name),
        seed=int(spec.seed),
        transform=spec.transform,
        delimiter=spec.delimiter,
        dropout=float(spec.dropout),
        mean=float(spec.mean),
        std=float(spec.std),
        tower=spec.tower,
        clip_min=None if spec.clip_min is None else float(spec.clip_min),
        clip_max=None if spec.clip_max is None else float(spec.clip_max),
    )


def _check_clip(name: str, spec: FeatureSpec, dense: bool) -> None:
    bounds = (spec.clip_min, spec.clip_max)
    if bounds == (None, None):
        return
    if not dense:
        raise ConfigError(f"data.features.{name}: clip_min/clip_max apply to kind=dense only.")
    if None not in bounds and spec.clip_min > spec.clip_max:
        raise ConfigError(
            f"data.features.{name}: clip_min={spec.clip_min} > clip_max={spec.clip_max}."
        )


def _resolve_table(
    name: str, spec: TableSpec | None, features: list[str], default_dim: int
) -> ResolvedTable:
    if spec is None:
        raise ConfigError(
            f"feature(s) {features} feed table '{name}', but data.tables.{name} is not declared; "
            f"add it with its num_buckets."
        )
    if spec.num_buckets < 2:
        raise ConfigError(
            f"data.tables.{name}.num_buckets={spec.num_buckets}: need >= 2 (bucket 0 is reserved for missing ids)."
        )
    dim = spec.embedding_dim or default_dim
    if dim % 4 != 0:
        # FBGEMM's sharded kernels require a multiple of 4 columns per shard.
        raise ConfigError(
            f"embedding dim {dim} for table '{name}' is not a multiple of 4 (FBGEMM needs it); set model.embedding_dim or data.tables.{name}.embedding_dim."
        )
    return ResolvedTable(name, int(spec.num_buckets), dim, spec.pooling, tuple(features))
