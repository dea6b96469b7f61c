"""Featurization: labels, dense transforms, id lists from list columns or delimited text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys.config import DataConfig, DenseTransform, FeatureKind, FeatureSpec, LabelSpec, TableSpec
from recsys.data.featurize import DataError, RecordOrigin, featurize
from recsys.hashing import hash_id
from recsys.schema import resolve_schema


def _schema(threshold: float | None = None):
    data = DataConfig(
        name="t",
        train_path="x",
        label=LabelSpec(column="y", threshold=threshold),
        features={
            "user": FeatureSpec(kind=FeatureKind.id, seed=1),
            "tags": FeatureSpec(kind=FeatureKind.id_list, seed=2, delimiter="|"),
            "count": FeatureSpec(kind=FeatureKind.dense, transform=DenseTransform.log1p),
        },
        tables={"user": TableSpec(num_buckets=100), "tags": TableSpec(num_buckets=50)},
    )
    return resolve_schema(data, 8)


def test_list_column_and_delimited_text_agree() -> None:
    schema = _schema()
    as_list = pa.table(
        {
            "y": [1, 0, 1],
            "user": [5, None, 7],
            "tags": [["a", "b"], [], None],
            "count": [0.0, 3.0, None],
        }
    )
    as_text = pa.table(
        {
            "y": [1, 0, 1],
            "user": ["5", "", "7"],
            "tags": ["a|b", "", None],
            "count": [0.0, 3.0, None],
        }
    )
    a, b = featurize(as_list, schema), featurize(as_text, schema)
    np.testing.assert_array_equal(a.ids["user"], b.ids["user"])
    np.testing.assert_array_equal(a.ids["tags"], b.ids["tags"])
    np.testing.assert_array_equal(a.lengths["tags"], [2, 0, 0])
    np.testing.assert_array_equal(b.lengths["tags"], [2, 0, 0])
    assert a.ids["user"].tolist() == [hash_id(5, 1, 100), 0, hash_id(7, 1, 100)]
    assert a.ids["tags"].tolist() == [hash_id("a", 2, 50), hash_id("b", 2, 50)]
    np.testing.assert_allclose(a.dense[:, 0], [0.0, np.log1p(3.0), 0.0], rtol=1e-6)
    np.testing.assert_array_equal(a.labels, [1, 0, 1])


def test_empty_entries_inside_a_list_are_dropped() -> None:
    arrays = featurize(
        pa.table({"y": [1], "user": [1], "tags": ["a||b|"], "count": [1.0]}), _schema()
    )
    assert arrays.lengths["tags"].tolist() == [2]


def test_threshold_binarizes_label() -> None:
    arrays = featurize(
        pa.table({"y": [1, 3, 4, 5], "user": [1] * 4, "tags": [["a"]] * 4, "count": [1.0] * 4}),
        _schema(threshold=4),
    )
    assert arrays.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("column", "values", "match"),
    [
        ("count", [1.0, float("nan")], r"f\.csv, row 11, column 'count'.*not finite"),
        ("count", [1.0, float("inf")], r"row 11, column 'count'"),
        ("y", [1, None], r"row 11, column 'y'"),
        ("y", [1, 2], r"row 11, column 'y'.*2.*data.label.threshold"),
    ],
)
def test_bad_values_name_file_row_column(column: str, values: list, match: str) -> None:
    table = pa.table({"y": [1, 0], "user": [1, 2], "tags": [["a"], ["b"]], "count": [1.0, 2.0]})
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
    with pytest.raises(DataError, match=match):
        featurize(table, _schema(), RecordOrigin("f.csv", first_row=10))


def test_list_feature_as_plain_number_is_refused() -> None:
    table = pa.table({"y": [1], "user": [1], "tags": [3], "count": [1.0]})
    with pytest.raises(DataError, match="tags.*neither a list nor text"):
        featurize(table, _schema())


def _clipped_schema(**clip):
    data = DataConfig(
        name="t",
        train_path="x",
        label=LabelSpec(column="y"),
        features={
            "user": FeatureSpec(kind=FeatureKind.id),
            "count": FeatureSpec(
                kind=FeatureKind.dense, transform=DenseTransform.log1p, mean=1.0, std=2.0, **clip
            ),
        },
        tables={"user": TableSpec(num_buckets=10)},
    )
    return resolve_schema(data, 8)


def test_dense_clip_applies_to_raw_values_before_transform_and_standardize() -> None:
    records = pa.table({"y": [0, 1, 0], "user": ["a", "b", "c"], "count": [-5.0, 3.0, 1e9]})
    arrays = featurize(records, _clipped_schema(clip_min=0.0, clip_max=100.0))
    expected = (np.log1p(np.array([0.0, 3.0, 100.0])) - 1.0) / 2.0
    np.testing.assert_allclose(arrays.dense[:, 0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "clip, match",
    [({"clip_min": 5.0, "clip_max": 1.0}, "clip_min=5.0 > clip_max=1.0"), ({}, None)],
)
def test_clip_bounds_are_checked(clip, match) -> None:
    if match is None:
        assert _clipped_schema(**clip).features[1].clip_min is None
        return
    with pytest.raises(ValueError, match=match):
        _clipped_schema(**clip)
