"""The resolved feature schema: every default filled in, every cross-reference checked.

`resolve_schema` (recsys.schema.resolve) builds it from `DataConfig`; the loader, the model,
the sharding planner's constraints, the export manifest and the serving scorer all read it.
It travels with checkpoints and exports as JSON (`to_dict` / `from_dict`), and `fingerprint`
says in 16 hex digits whether two schemas map raw rows to the same table rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from recsys.config import (
    Combine,
    DenseTransform,
    FeatureKind,
    LabelSpec,
    ManagedEviction,
    Pooling,
    Tower,
)


class LookupPart(StrEnum):
    """Which row of a physical table a lookup reads, from b = 1 + hash mod (hash_buckets - 1)."""

    bucket = "bucket"  # b itself
    quotient = "quotient"  # 1 + (b - 1) // divisor
    remainder = "remainder"  # 1 + (b - 1) % divisor


@dataclass(frozen=True)
class ResolvedManaged:
    """A managed table's remap (`data.tables.<t>.managed`, recsys.model.managed)."""

    eviction: ManagedEviction
    admit_after: int
    eviction_interval: int
    input_hash_size: int  # its lookups' ids lie in [0, input_hash_size)


@dataclass(frozen=True)
class ResolvedTable:
    name: str
    num_buckets: int
    embedding_dim: int
    pooling: Pooling
    features: tuple[str, ...]  # the lookup keys that read it (feature names for plain tables)
    managed: ResolvedManaged | None = None  # hashing=managed: rows handed out by a remap


@dataclass(frozen=True)
class ResolvedLookup:
    """One read of a physical table by a feature: a KeyedJaggedTensor key and its hash rule.

    A plain table gives each feature one lookup keyed by the feature's name; double hashing
    and the quotient-remainder trick give two, whose pooled embeddings `combine` joins.
    """

    key: str
    feature: str
    table: str  # physical table
    seed: int  # mmh3 seed
    hash_buckets: int  # b = 1 + mmh3(id, seed) mod (hash_buckets - 1); 0 for missing ids
    part: LookupPart = LookupPart.bucket
    divisor: int = 1  # quotient / remainder: b - 1 divided by this
    combine: Combine = Combine.sum


@dataclass(frozen=True)
class ResolvedFeature:
    name: str
    kind: FeatureKind
    column: str
    table: str | None
    seed: int
    transform: DenseTransform
    delimiter: str | None
    dropout: float = 0.0
    mean: float = 0.0
    std: float = 1.0
    tower: Tower | None = None
    clip_min: float | None = None
    clip_max: float | None = None


@dataclass(frozen=True)
class Schema:
    """The feature schema with every default filled in and every cross-reference checked.

    Order matters and is fixed: features in declaration order, tables in order of first use.
    The model's feature axis, the KeyedJaggedTensor keys and the export all follow it.
    """

    label: LabelSpec
    features: tuple[ResolvedFeature, ...]
    tables: tuple[ResolvedTable, ...]  # physical tables
    lookups: tuple[ResolvedLookup, ...] = ()  # feature order; () = one plain lookup per feature

    def __post_init__(self) -> None:
        if not self.lookups:  # a schema from before per-table hashing options: all plain
            plain = tuple(
                ResolvedLookup(f.name, f.name, f.table, f.seed, self.table(f.table).num_buckets)
                for f in self.sparse_features
            )
            object.__setattr__(self, "lookups", plain)

    def lookups_of(self, feature: str) -> tuple[ResolvedLookup, ...]:
        return tuple(lk for lk in self.lookups if lk.feature == feature)

    @property
    def lookup_keys(self) -> list[str]:
        """The KeyedJaggedTensor keys, in order (== sparse feature names when all plain)."""
        return [lk.key for lk in self.lookups]

    def restrict(self, feature_names: set[str]) -> Schema:
        """The schema of some features only, with their lookups and the tables those read."""
        lookups = tuple(lk for lk in self.lookups if lk.feature in feature_names)
        used = {lk.table for lk in lookups}
        return Schema(
            label=self.label,
            features=tuple(f for f in self.features if f.name in feature_names),
            tables=tuple(t for t in self.tables if t.name in used),
            lookups=lookups,
        )

    @property
    def dense_features(self) -> tuple[ResolvedFeature, ...]:
        return tuple(f for f in self.features if f.kind is FeatureKind.dense)

    @property
    def sparse_features(self) -> tuple[ResolvedFeature, ...]:
        return tuple(f for f in self.features if f.kind is not FeatureKind.dense)

    def table(self, name: str) -> ResolvedTable:
        """A physical table by name (a qr table `t` becomes `t__q` and `t__r`)."""
        found = [t for t in self.tables if t.name == name]
        if not found:
            raise KeyError(f"no physical table {name!r}; tables: {[t.name for t in self.tables]}")
        return found[0]

    @property
    def columns(self) -> list[str]:
        """Every source column the schema reads, label first, without repeats."""
        cols = [self.label.column] + [f.column for f in self.features]
        return list(dict.fromkeys(cols))

    @property
    def managed_tables(self) -> tuple[ResolvedTable, ...]:
        return tuple(t for t in self.tables if t.managed is not None)

    def to_dict(self) -> dict[str, Any]:
        d = json.loads(json.dumps(asdict(self), default=lambda e: e.value))
        for table in d["tables"]:  # left out unless set: schemas saved before it still match
            if table["managed"] is None:
                del table["managed"]
        return d

    def fingerprint(self) -> str:
        """A short hash of everything that decides how raw rows map to table rows."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Schema:
        return Schema(
            label=LabelSpec(**d["label"]),
            features=tuple(
                ResolvedFeature(
                    **{
                        **f,
                        "kind": FeatureKind(f["kind"]),
                        "transform": DenseTransform(f["transform"]),
                        "tower": Tower(f["tower"]) if f.get("tower") else None,
                    }
                )
                for f in d["features"]
            ),
            tables=tuple(_table_from_dict(t) for t in d["tables"]),
            lookups=tuple(
                ResolvedLookup(
                    **{**lk, "part": LookupPart(lk["part"]), "combine": Combine(lk["combine"])}
                )
                for lk in d.get("lookups", ())
            ),
        )


def _table_from_dict(t: dict[str, Any]) -> ResolvedTable:
    managed = t.get("managed")
    if managed is not None:
        managed = ResolvedManaged(**{**managed, "eviction": ManagedEviction(managed["eviction"])})
    return ResolvedTable(
        **{
            **t,
            "pooling": Pooling(t["pooling"]),
            "features": tuple(t["features"]),
            "managed": managed,
        }
    )


def schema_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable `data.*` keys whose values differ: 'data.tables.user.num_buckets: 8 -> 16'."""
    out = []
    if saved["label"] != current["label"]:
        out.append(f"data.label: {saved['label']} -> {current['label']}")
    for kind in ("features", "tables"):
        before = {e["name"]: e for e in saved[kind]}
        after = {e["name"]: e for e in current[kind]}
        for name in sorted(before.keys() | after.keys()):
            if name not in after:
                out.append(f"data.{kind}.{name}: removed")
            elif name not in before:
                out.append(f"data.{kind}.{name}: added")
            else:
                for key in sorted(before[name].keys() | after[name].keys()):
                    old, new = before[name].get(key), after[name].get(key)
                    if old != new:
                        out.append(f"data.{kind}.{name}.{key}: {old} -> {new}")
    if not out:  # same entries, other order: the model's feature axis follows the order
        out.append("data.features order")
    return out
