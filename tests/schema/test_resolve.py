"""resolve_schema: defaults filled, cross-references checked, errors naming the data.* key."""

from __future__ import annotations

import pytest

from recsys.compose import load_config
from recsys.config import (
    ConfigError,
    DataConfig,
    DataFormat,
    FeatureKind,
    FeatureSpec,
    LabelSpec,
    TableSpec,
)
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
        ({"shared": TableSpec(num_buckets=10), "orphan": TableSpec()}, "data.tables.orphan"),
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


def test_tables_without_num_buckets_get_the_default() -> None:
    data = _data(shared=TableSpec(embedding_dim=8))  # declared without num_buckets
    data.features["c"] = FeatureSpec(kind=FeatureKind.id_list)  # its table "c": not declared
    schema = resolve_schema(data, default_dim=16)
    assert [(t.name, t.num_buckets) for t in schema.tables] == [("shared", 2**18), ("c", 2**18)]
    assert schema.table("shared").embedding_dim == 8
    data.default_num_buckets = 1000
    assert resolve_schema(data, 16).table("c").num_buckets == 1000
    data.default_num_buckets = 1
    with pytest.raises(ConfigError, match="data.default_num_buckets=1: need >= 2"):
        resolve_schema(data, 16)


def test_the_packaged_default_is_what_the_docs_say() -> None:
    assert load_config([]).data.default_num_buckets == 262_144


def _libsvm(columns: list[str] | None, **features: FeatureKind) -> DataConfig:
    return DataConfig(
        name="t",
        train_path="x",
        format=DataFormat.libsvm,
        columns=columns,
        label=LabelSpec(column="label"),
        features={name: FeatureSpec(kind=kind) for name, kind in features.items()},
    )


def test_a_libsvm_layout_resolves() -> None:
    for columns in (["user", "item"], ["user=1-100", "item=field:3"]):
        resolve_schema(_libsvm(columns, user=FeatureKind.id, item=FeatureKind.id_list), 16)


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        (None, "data.format=libsvm needs data.columns"),
        (["user", "item=5"], "mixes bare names"),
        (["user=5-2", "item=7"], r"data.columns\[0\]='user=5-2': the range 5-2 is empty"),
        (["user=a-b", "item=7"], r"data.columns\[0\]='user=a-b' is not `name`"),
        (["user=1", "item=field:x"], r"data.columns\[1\]='item=field:x' is not"),
        (["user", "user"], r"names \['user'\] more than once"),
        (["user"], r"column\(s\) \['item'\] read by data.features are not in data.columns"),
        (["user", "item", "label"], "names the label column 'label'"),
    ],
)
def test_libsvm_layout_errors_name_the_entry(columns: list[str] | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_schema(_libsvm(columns, user=FeatureKind.id, item=FeatureKind.id), 16)


def test_a_libsvm_column_holds_one_kind() -> None:
    data = _libsvm(["user=0-9"], user=FeatureKind.id)
    data.features["user_value"] = FeatureSpec(kind=FeatureKind.dense, column="user")
    with pytest.raises(
        ConfigError, match=r"column 'user' feeds features of kinds \['dense', 'id'\]"
    ):
        resolve_schema(data, 16)
