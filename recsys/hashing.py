"""The hashing trick: raw ids -> bucket rows of a fixed-size embedding table.

The rule, which a serving system must reproduce exactly (the export manifest names it):

    bucket(id) = 0                                  if id is missing (null or the empty string)
    bucket(id) = 1 + mmh3_x86_32(utf8(canonical(id)), seed) mod (num_buckets - 1)   otherwise

`canonical(id)` is the id's decimal text for integers and the string itself for strings, so the
same id read from Parquet (int64) or from CSV (text) lands in the same bucket. Bucket 0 is kept
for missing ids so that "unknown" learns its own embedding instead of sharing a real id's row.

Changing anything here remaps every id of every trained model: tests pin golden values.
"""

from __future__ import annotations

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HASH_FUNCTION = "mmh3_x86_32_unsigned"
MISSING_BUCKET = 0


def hash_id(value: str | int | None, seed: int, num_buckets: int) -> int:
    """Bucket of one raw id (the reference implementation; `hash_array` is the fast path)."""
    if value is None or value == "":
        return MISSING_BUCKET
    return 1 + mmh3.hash(str(value), seed, signed=False) % (num_buckets - 1)


def hash_array(values: pa.Array | pa.ChunkedArray, seed: int, num_buckets: int) -> np.ndarray:
    """Buckets of a column of ids (nulls -> MISSING_BUCKET), as int64.

    Each distinct value is hashed once: the column is dictionary-encoded first, which turns
    the per-row Python call into a per-distinct-value one (click-log columns repeat heavily).
    """
    text = _canonical_text(values)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    encoded = pc.dictionary_encode(text)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries().combine_chunks() if encoded.num_chunks else encoded
        if isinstance(encoded, pa.ChunkedArray):  # no chunks at all: an empty column
            return np.zeros(0, dtype=np.int64)
    uniques = encoded.dictionary.to_pylist()
    table = np.fromiter(
        (mmh3.hash(u, seed, signed=False) for u in uniques), dtype=np.uint64, count=len(uniques)
    )
    buckets = (1 + table % np.uint64(num_buckets - 1)).astype(np.int64)
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.full(len(indices), MISSING_BUCKET, dtype=np.int64)
    present = indices >= 0
    out[present] = buckets[indices[present]]
    return out


def _canonical_text(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    kind = values.type
    if pa.types.is_dictionary(kind):
        values = values.cast(kind.value_type)
        kind = kind.value_type
    if pa.types.is_string(kind):
        return values
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return pc.cast(values, pa.string())
    if pa.types.is_floating(kind):
        # A float id column usually holds integers with nulls read from text: 3.0 -> "3".
        integral = pc.all(pc.equal(pc.floor(values), values)).as_py()
        if integral is not False:
            return pc.cast(pc.cast(values, pa.int64()), pa.string())
    return pc.cast(values, pa.string())
