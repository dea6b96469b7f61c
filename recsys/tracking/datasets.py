"""MLflow dataset inputs: what a run read (train / validation / eval), as the UI shows them.

A dataset input fills the run page's "Datasets" box and the runs table's Dataset column. Only
metadata is logged (source URI, digest, schema, row count): MLflow never reads the data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

#: The input tag MLflow's UI reads a dataset's role from.
DATASET_CONTEXT_TAG = "mlflow.data.context"
#: Roles a dataset plays in a run.
CONTEXTS = ("train", "validation", "eval")


def dataset_input(
    context: str,
    name: str,
    source: str,
    digest: str,
    schema: Mapping[str, str],
    rows: int | None,
) -> DatasetInput:
    """An MLflow `DatasetInput` for `client.log_inputs`.

    Args:
        context: the dataset's role: one of `CONTEXTS`.
        name: the dataset's name (e.g. the data config's name).
        source: where the data is: a path, glob or URI.
        digest: a short content fingerprint (see `recsys.data.fingerprint`).
        schema: column name -> type ("double", "string", ...), written as MLflow's colspec.
        rows: row count when known cheaply, else None.

    Raises:
        ValueError: `context` is not one of `CONTEXTS`.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if context not in CONTEXTS:
        raise ValueError(f"dataset context {context!r}: expected one of {CONTEXTS}")
    colspec = [{"name": column, "type": kind} for column, kind in schema.items()]
    dataset = Dataset(
        name=name,
        digest=digest,
        source_type=_source_type(source),
        source=json.dumps({"uri": source}),
        schema=json.dumps({"mlflow_colspec": colspec}),
        profile=json.dumps({"num_rows": rows}),
    )
    return DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, context)])


def _source_type(source: str) -> str:
    """MLflow's source type: the URI scheme (s3, gs, hdfs, http), "local" for plain paths."""
    scheme, sep, _ = source.partition("://")
    return scheme.lower() if sep and scheme.lower() != "file" else "local"
