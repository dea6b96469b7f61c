"""The feature schema, resolved: the single source of truth for loader, model and export.

resolved.py   Schema and its parts (features, physical tables, lookups), JSON codec,
              fingerprint, and the difference report checkpoints give on a mismatch
resolve.py    resolve_schema: DataConfig -> Schema, every data.* key checked
expand.py     per-table hashing options (plain / double / qr / managed) -> physical tables + lookups
"""

from recsys.schema.expand import QUOTIENT_SUFFIX, REMAINDER_SUFFIX, SECOND_SUFFIX, expand_tables
from recsys.schema.resolve import resolve_schema
from recsys.schema.resolved import (
    LookupPart,
    ResolvedFeature,
    ResolvedLookup,
    ResolvedManaged,
    ResolvedTable,
    Schema,
    schema_differences,
)

__all__ = [
    "QUOTIENT_SUFFIX",
    "REMAINDER_SUFFIX",
    "SECOND_SUFFIX",
    "LookupPart",
    "ResolvedFeature",
    "ResolvedLookup",
    "ResolvedManaged",
    "ResolvedTable",
    "Schema",
    "expand_tables",
    "resolve_schema",
    "schema_differences",
]
