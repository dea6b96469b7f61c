"""Per-table hashing options: how a declared table becomes physical tables and lookups.

    hashing=plain   one lookup per feature: row = b = 1 + mmh3(id, seed) mod (N - 1)
    hashing=double  a second lookup with seed2 = seed + SECOND_SEED_OFFSET, into the same table
                    or (second_num_buckets set) into table `<t>__h2`; embeddings summed. Two ids
                    share a vector only if they collide under both hashes (Weinberger et al.
                    2009; "hash embeddings", Svenstrup et al. 2017).
    hashing=qr      b as above over a virtual N buckets, then rows 1 + (b-1) // R of `<t>__q`
                    (1 + ceil((N-1)/R) rows) and 1 + (b-1) % R of `<t>__r` (R + 1 rows),
                    combined by sum or elementwise product. No two buckets share both rows
                    (Shi et al. 2019, "Compositional Embeddings Using Complementary Partitions"):
                    memory ~ N/R + R rows instead of N.
    hashing=managed b = 1 + mmh3(id, seed) mod (managed.input_hash_size - 1) (the 32-bit hash
                    itself by default), then a remap (TorchRec's managed-collision module, MCH)
                    gives b a row of its own once it earns one (admission, eviction: see
                    `ManagedSpec`); ids without a row share the fallback row (the last row of
                    each row shard). Row 0 is not reserved: missing ids (b = 0) are one more id.

Row 0 of every hashed (not managed) physical table stays reserved for missing ids. The model sees one pooled
vector per feature either way (`recsys.model.combine`), and first-order biases of a feature's
lookups are always summed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from recsys.config import (
    MANAGED_INPUT_HASH_SIZE,
    Combine,
    ConfigError,
    FeatureKind,
    ManagedSpec,
    TableHashing,
    TableSpec,
)
from recsys.hashing import second_seed
from recsys.schema.resolved import (
    LookupPart,
    ResolvedFeature,
    ResolvedLookup,
    ResolvedManaged,
    ResolvedTable,
)

SECOND_SUFFIX = "__h2"  # the second lookup (and table) of double hashing
QUOTIENT_SUFFIX, REMAINDER_SUFFIX = "__q", "__r"


def expand_tables(
    tables: tuple[ResolvedTable, ...],
    specs: Mapping[str, TableSpec],
    features: tuple[ResolvedFeature, ...],
) -> tuple[tuple[ResolvedTable, ...], tuple[ResolvedLookup, ...]]:
    """Physical tables (in declaration order) and lookups (in feature order) of a schema."""
    by_name = {f.name: f for f in features}
    physical: list[ResolvedTable] = []
    lookups: list[ResolvedLookup] = []
    for table in tables:
        users = [by_name[f] for f in table.features]
        _check_options(table.name, specs[table.name], users)
        more_tables, more_lookups = _EXPAND[specs[table.name].hashing](
            table, specs[table.name], users
        )
        physical += more_tables
        lookups += more_lookups
    order = {f.name: i for i, f in enumerate(features)}
    lookups.sort(key=lambda lk: order[lk.feature])  # stable: a feature's lookups keep their order
    _check_unique(physical, lookups)
    return tuple(physical), tuple(lookups)


def _check_options(name: str, spec: TableSpec, users: list[ResolvedFeature]) -> None:
    key = f"data.tables.{name}"
    if spec.second_num_buckets is not None and spec.hashing is not TableHashing.double:
        raise ConfigError(f"{key}.second_num_buckets applies to hashing=double only; drop it.")
    if spec.second_num_buckets is not None and spec.second_num_buckets < 2:
        raise ConfigError(
            f"{key}.second_num_buckets={spec.second_num_buckets}: need >= 2 (row 0 is missing)."
        )
    if spec.qr_remainder is not None and spec.hashing is not TableHashing.qr:
        raise ConfigError(f"{key}.qr_remainder applies to hashing=qr only; drop it.")
    if spec.combine is Combine.product and spec.hashing is not TableHashing.qr:
        raise ConfigError(f"{key}.combine=product applies to hashing=qr only; use combine=sum.")
    lists = [f.name for f in users if f.kind is FeatureKind.id_list]
    if spec.combine is Combine.product and lists:
        # Pooling a bag of products is not the product of the pooled bags, and the lookups
        # are pooled separately: refuse rather than train something other than asked.
        raise ConfigError(
            f"{key}.combine=product: id_list feature(s) {lists} read this table, and a bag's "
            f"pooled product is not a product of pools; use {key}.combine=sum."
        )
    _check_managed(key, spec)
    for f in users:
        if not 0 <= f.seed < 2**32:
            raise ConfigError(f"data.features.{f.name}.seed={f.seed}: need 0 <= seed < 2**32.")


def _check_managed(key: str, spec: TableSpec) -> None:
    options = spec.managed
    if spec.hashing is not TableHashing.managed:
        if options != ManagedSpec():
            raise ConfigError(f"{key}.managed applies to hashing=managed only; drop it.")
        return
    if spec.num_buckets is not None and spec.num_buckets < 2:
        return  # _resolve_table names it
    for name, value, low in (
        ("admit_after", options.admit_after, 1),
        ("eviction_interval", options.eviction_interval, 1),
        ("input_hash_size", options.input_hash_size, 2),
    ):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{key}.managed.{name}={value!r}: need an integer >= {low}.")
    if options.input_hash_size > MANAGED_INPUT_HASH_SIZE:
        raise ConfigError(
            f"{key}.managed.input_hash_size={options.input_hash_size}: ids are 32-bit hashes, "
            f"so at most {MANAGED_INPUT_HASH_SIZE} (2**32 + 1, the default) values differ."
        )


def _managed(
    table: ResolvedTable, spec: TableSpec, users: list[ResolvedFeature]
) -> tuple[list[ResolvedTable], list[ResolvedLookup]]:
    options = spec.managed
    size = int(options.input_hash_size)
    managed = ResolvedManaged(
        options.eviction, int(options.admit_after), int(options.eviction_interval), size
    )
    lookups = [ResolvedLookup(f.name, f.name, table.name, f.seed, size) for f in users]
    return [replace(table, managed=managed)], lookups


def _plain(
    table: ResolvedTable, spec: TableSpec, users: list[ResolvedFeature]
) -> tuple[list[ResolvedTable], list[ResolvedLookup]]:
    lookups = [ResolvedLookup(f.name, f.name, table.name, f.seed, table.num_buckets) for f in users]
    return [table], lookups


def _double(
    table: ResolvedTable, spec: TableSpec, users: list[ResolvedFeature]
) -> tuple[list[ResolvedTable], list[ResolvedLookup]]:
    separate = spec.second_num_buckets is not None
    second_name = table.name + SECOND_SUFFIX if separate else table.name
    second_buckets = spec.second_num_buckets if separate else table.num_buckets
    first = [ResolvedLookup(f.name, f.name, table.name, f.seed, table.num_buckets) for f in users]
    second = [
        ResolvedLookup(
            f.name + SECOND_SUFFIX, f.name, second_name, second_seed(f.seed), second_buckets
        )
        for f in users
    ]
    lookups = [lk for pair in zip(first, second, strict=True) for lk in pair]
    if not separate:
        return [_reads(table, table.name, table.num_buckets, lookups)], lookups
    return [
        _reads(table, table.name, table.num_buckets, first),
        _reads(table, second_name, second_buckets, second),
    ], lookups


def _qr(
    table: ResolvedTable, spec: TableSpec, users: list[ResolvedFeature]
) -> tuple[list[ResolvedTable], list[ResolvedLookup]]:
    n = table.num_buckets
    divisor = spec.qr_remainder or math.isqrt(n - 2) + 1  # ceil(sqrt(n - 1)) for n >= 2
    if not 2 <= divisor < n - 1:
        raise ConfigError(
            f"data.tables.{table.name}.qr_remainder={divisor}: need 2 <= qr_remainder < "
            f"num_buckets - 1 = {n - 1}, else one of the two tables has a single row."
        )
    quotient_rows = 1 + -(-(n - 1) // divisor)
    lookups, quotients, remainders = [], [], []
    for f in users:
        common = {"feature": f.name, "seed": f.seed, "hash_buckets": n, "divisor": divisor}
        q = ResolvedLookup(
            key=f.name + QUOTIENT_SUFFIX,
            table=table.name + QUOTIENT_SUFFIX,
            part=LookupPart.quotient,
            combine=spec.combine,
            **common,
        )
        r = ResolvedLookup(
            key=f.name + REMAINDER_SUFFIX,
            table=table.name + REMAINDER_SUFFIX,
            part=LookupPart.remainder,
            combine=spec.combine,
            **common,
        )
        lookups += [q, r]
        quotients.append(q)
        remainders.append(r)
    return [
        _reads(table, table.name + QUOTIENT_SUFFIX, quotient_rows, quotients),
        _reads(table, table.name + REMAINDER_SUFFIX, divisor + 1, remainders),
    ], lookups


_EXPAND = {
    TableHashing.plain: _plain,
    TableHashing.double: _double,
    TableHashing.qr: _qr,
    TableHashing.managed: _managed,
}


def _reads(
    table: ResolvedTable, name: str, rows: int, lookups: list[ResolvedLookup]
) -> ResolvedTable:
    keys = tuple(lk.key for lk in lookups)
    return ResolvedTable(name, int(rows), table.embedding_dim, table.pooling, keys)


def _check_unique(tables: list[ResolvedTable], lookups: list[ResolvedLookup]) -> None:
    for kind, names in (
        ("table", [t.name for t in tables]),
        ("lookup", [lk.key for lk in lookups]),
    ):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(
                f"{kind} name(s) {repeated} arise twice once hashing options are expanded "
                f"(suffixes {SECOND_SUFFIX}, {QUOTIENT_SUFFIX}, {REMAINDER_SUFFIX} are "
                f"reserved); rename the table or feature in data.tables / data.features."
            )
