"""resolve_schema: defaults filled, cross-references checked, errors naming the data.* key."""

from __future__ import annotations

import pytest

from recsys.compose import load_config
from recsys.config import ConfigError, DataConfig, FeatureKind, FeatureSpec, TableSpec
from recsys.schema import Schema, resolve_schema


def _data(**tables: TableSpec) -> DataConfig:
    return DataConfig(
        name="t",
        train_path="x",
        features={
            "a": FeatureSpec(kind=FeatureKind.id, table="shared"),
            "b": FeatureSpec(kind=FeatureKind.id, table="shared"),
        },
        tables=tables,
    )


def test_shared_table_is_fed_by_both_features() -> None:
    schema = resolve_schema(_data(shared=TableSpec(num_buckets=10)), default_dim=8)
    assert schema.tables[0].features == ("a", "b")
    assert schema.tables[0].embedding_dim == 8


@pytest.mark.parametrize(
    ("tables", "match"),
    [
        ({}, "data.tables.shared is not declared"),
        ({"shared": TableSpec(num_buckets=1)}, "num_buckets=1"),
        ({"shared": TableSpec(num_buckets=10, embedding_dim=6)}, "multiple of 4"),
        (
            {"shared": TableSpec(num_buckets=10), "orphan": TableSpec(num_buckets=10)},
            "data.tables.orphan",
        ),
    ],
)
def test_schema_errors_name_the_key(tables: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_schema(_data(**tables), default_dim=8)


def test_schema_round_trips_through_dict() -> None:
    schema = resolve_schema(load_config([]).data, 16)
    assert Schema.from_dict(schema.to_dict()) == schema
    assert Schema.from_dict(schema.to_dict()).fingerprint() == schema.fingerprint()
