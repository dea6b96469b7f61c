"""`resolve_schema`: the typed `DataConfig` -> the resolved `Schema`, checked once.

Errors name the offending `data.*` key and what to do.
"""

from __future__ import annotations

from recsys.config import (
    ConfigError,
    DataConfig,
    DataFormat,
    FeatureKind,
    FeatureSpec,
    TableSpec,
)
from recsys.schema.expand import expand_tables
from recsys.schema.layout import check_libsvm_columns, parse_libsvm_layout
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
    if data.default_num_buckets < 2:
        raise ConfigError(
            f"data.default_num_buckets={data.default_num_buckets}: need >= 2 (bucket 0 is "
            f"reserved for missing ids)."
        )
    # A table not declared in data.tables is a table of defaults (data.default_num_buckets).
    specs = {name: data.tables.get(name) or TableSpec() for name in users}
    tables = tuple(
        _resolve_table(name, specs[name], fs, default_dim, data.default_num_buckets)
        for name, fs in users.items()
    )
    if data.format is DataFormat.libsvm:
        _check_libsvm(data, features)
    physical, lookups = expand_tables(tables, specs, features)
    return Schema(label=data.label, features=features, tables=physical, lookups=lookups)


def _check_libsvm(data: DataConfig, features: tuple[ResolvedFeature, ...]) -> None:
    kinds: dict[str, set[FeatureKind]] = {}
    for f in features:
        kinds.setdefault(f.column, set()).add(f.kind)
    layout = parse_libsvm_layout(data.columns)
    check_libsvm_columns(layout, data.label.column, kinds)


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
    name: str, spec: TableSpec, features: list[str], default_dim: int, default_buckets: int
) -> ResolvedTable:
    buckets = default_buckets if spec.num_buckets is None else spec.num_buckets
    if buckets < 2:
        raise ConfigError(
            f"data.tables.{name}.num_buckets={buckets}: need >= 2 (bucket 0 is reserved for missing ids)."
        )
    dim = spec.embedding_dim or default_dim
    if dim % 4 != 0:
        # FBGEMM's sharded kernels require a multiple of 4 columns per shard.
        raise ConfigError(
            f"embedding dim {dim} for table '{name}' is not a multiple of 4 (FBGEMM needs it); set model.embedding_dim or data.tables.{name}.embedding_dim."
        )
    return ResolvedTable(name, int(buckets), dim, spec.pooling, tuple(features))
