"""The hashing trick: raw ids -> bucket rows of a fixed-size embedding table.

The rule, which a serving system must reproduce exactly (the export manifest names it):

    bucket(id) = 0                                  if id is missing (null or the empty string)
    bucket(id) = 1 + mmh3_x86_32(utf8(canonical(id)), seed) mod (num_buckets - 1)   otherwise

`canonical(id)` is the id's decimal text for integers and the string itself for strings, so the
same id read from Parquet (int64) or from CSV (text) lands in the same bucket. Bucket 0 is kept
for missing ids so that "unknown" learns its own embedding instead of sharing a real id's row.

Collision-reducing options (double hashing, the quotient-remainder trick) are built from the
same bucket: a second seed, or a split of the bucket into a quotient and a remainder row
(`qr_split`). Every physical table keeps row 0 for missing ids.

`hash32_array` is murmur3_x86_32 in numpy, over many keys at once: no Python call per id.
Changing anything here remaps every id of every trained model: tests pin golden values.
"""

from __future__ import annotations

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib.stride_tricks import sliding_window_view

HASH_FUNCTION = "mmh3_x86_32_unsigned"
MISSING_BUCKET = 0
# Seed of a feature's second hash under double hashing: its own seed plus this (mod 2**32).
# An odd, bit-dense constant (2**32 / golden ratio), so the two seeds never coincide.
SECOND_SEED_OFFSET = 0x9E3779B9

_U32 = np.uint32
_C1, _C2 = _U32(0xCC9E2D51), _U32(0x1B873593)
_POW10 = np.array([10**k for k in range(1, 20)], dtype=np.uint64)  # 10 .. 10**19
# "0000".."9999" as native uint32 words: viewed back as bytes they read "0000".."9999".
_DIGITS4 = np.frombuffer(b"".join(b"%04d" % i for i in range(10_000)), np.uint32)
_TEN_THOUSAND = np.uint64(10_000)
# Below this many ids a block is dictionary-encoded only if it repeats a lot (see _hash_plain).
_DISTINCT_SAMPLE = 2048


def hash_id(value: str | int | None, seed: int, num_buckets: int) -> int:
    """Bucket of one raw id (the reference implementation; `hash_array` is the fast path)."""
    if value is None or value == "":
        return MISSING_BUCKET
    return 1 + mmh3.hash(str(value), seed, signed=False) % (num_buckets - 1)


def second_seed(seed: int) -> int:
    """The seed of the second hash under double hashing."""
    return (seed + SECOND_SEED_OFFSET) % 2**32


def hash_array(values: pa.Array | pa.ChunkedArray, seed: int, num_buckets: int) -> np.ndarray:
    """Buckets of a column of ids (nulls and empty strings -> MISSING_BUCKET), as int64."""
    hashes, present = hash32_array(values, seed)
    return buckets_of(hashes, present, num_buckets)


def buckets_of(hashes: np.ndarray, present: np.ndarray, num_buckets: int) -> np.ndarray:
    """1 + hash mod (num_buckets - 1) where the id is present, MISSING_BUCKET elsewhere."""
    buckets = hashes.astype(np.int64) % (num_buckets - 1) + 1
    buckets[~present] = MISSING_BUCKET
    return buckets


def qr_split(buckets: np.ndarray, divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """Quotient and remainder rows of buckets (Shi et al. 2019, complementary partitions).

    Bucket b >= 1 maps to quotient row 1 + (b - 1) // divisor and remainder row
    1 + (b - 1) % divisor: no two buckets share both rows. Missing stays row 0 in each.
    """
    shifted = np.maximum(buckets - 1, 0)
    present = buckets != MISSING_BUCKET
    quotient = np.where(present, shifted // divisor + 1, MISSING_BUCKET)
    remainder = np.where(present, shifted % divisor + 1, MISSING_BUCKET)
    return quotient, remainder


def hash32_array(values: pa.Array | pa.ChunkedArray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """mmh3_x86_32 (unsigned) of every id's canonical text, and a mask of present ids.

    Returns uint32 hashes and a bool mask; missing ids (null, "") are False there and their
    hash is meaningless. Bit-identical to `mmh3.hash(str(id), seed, signed=False)`.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"mmh3 seed {seed} is out of range: use 0 <= seed < 2**32.")
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = [_hash_chunk(c, _U32(seed)) for c in chunks if len(c)]
    if not parts:
        return np.zeros(0, np.uint32), np.zeros(0, bool)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _hash_chunk(values: pa.Array, seed: np.uint32) -> tuple[np.ndarray, np.ndarray]:
    kind = values.type
    if pa.types.is_dictionary(kind):
        # Hash each dictionary entry once, then gather: the cheap path for repetitive columns.
        hashes, present = _hash_chunk(values.dictionary, seed)
        if len(values.dictionary) == 0:
            return np.zeros(len(values), np.uint32), np.zeros(len(values), bool)
        indices = values.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        valid = values.indices.is_valid().to_numpy(zero_copy_only=False)
        return hashes[indices], present[indices] & valid
    if pa.types.is_floating(kind):
        # A float id column usually holds integers with nulls read from text: 3.0 -> "3".
        integral = pc.all(pc.equal(pc.floor(values), values)).as_py()
        if integral is not False:
            return _hash_chunk(pc.cast(values, pa.int64()), seed)
    if pa.types.is_integer(kind):
        return _hash_integers(values, seed)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        values = pc.cast(values, pa.large_string())
    return _hash_plain(values, seed)


_FEW_LENGTHS = 4  # key lengths worth one pass each over the lengths rather than a sort


def _hash_plain(values: pa.Array, seed: np.uint32) -> tuple[np.ndarray, np.ndarray]:
    """Strings; dictionary-encoded first when a sample says the block repeats a lot."""
    sample = values.slice(0, _DISTINCT_SAMPLE)
    if len(values) > 4 * _DISTINCT_SAMPLE and pc.count_distinct(sample).as_py() < len(sample) // 4:
        return _hash_chunk(pc.dictionary_encode(values), seed)
    data, offsets = _string_buffers(values)
    lengths = np.diff(offsets)
    present = values.is_valid().to_numpy(zero_copy_only=False) & (lengths > 0)
    hashes = _hash_one_length(data, offsets, lengths, seed)
    if hashes is None:
        hashes = _hash_by_length(data, offsets[:-1], lengths, seed)
    return hashes, present


def _hash_one_length(
    data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, seed: np.uint32
) -> np.ndarray | None:
    """The keys of a string array whose non-empty keys all have one byte length (Criteo's
    8-hex ids, some missing; or none at all), else None. Those keys lie back to back in the
    data buffer, so they are one [m, length] view: no gather of each key, no grouping by
    length (which took ~20% of the loader's time on `make bench`'s Criteo logs)."""
    nonempty = lengths > 0
    m = int(np.count_nonzero(nonempty))
    if not m:
        return np.full(len(lengths), _empty_key_hash(seed))
    length = int(lengths.max())
    if int(offsets[-1] - offsets[0]) != m * length:  # another length among the non-empty
        return None
    start = int(offsets[0])
    keys = data[start : start + m * length].reshape(m, length)
    hashes = _murmur3_fixed(keys, m, length, seed)
    if m == len(lengths):
        return hashes
    out = np.full(len(lengths), _empty_key_hash(seed))
    out[nonempty] = hashes
    return out


def _empty_key_hash(seed: np.uint32) -> np.uint32:
    return _murmur3_fixed(None, 1, 0, seed)[0]


def _string_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes and the (n + 1) offsets of a string array, without copying per value."""
    _, offsets_buf, data_buf = values.buffers()
    wide = pa.types.is_large_string(values.type)
    offsets = np.frombuffer(offsets_buf, np.int64 if wide else np.int32)
    offsets = offsets[values.offset : values.offset + len(values) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offsets


def _hash_by_length(
    data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seed: np.uint32
) -> np.ndarray:
    """Hash keys data[starts[i] : starts[i] + lengths[i]], grouped by byte length."""
    out = np.empty(len(lengths), np.uint32)
    if not len(lengths):
        return out
    for group in _same_length_groups(lengths):
        length = int(lengths[group[0]])
        # Row i of the window view is data[i : i + length]: one gather per key, not per byte.
        keys = sliding_window_view(data, length)[starts[group]] if length else None
        out[group] = _murmur3_fixed(keys, len(group), length, seed)
    return out


def _same_length_groups(lengths: np.ndarray) -> list[np.ndarray]:
    """Positions of the keys of each byte length. A few lengths (ids of a few digit counts,
    and 0 for the missing ones) are found with one pass each; many (free text) with one
    sort. (One length with empty keys is `_hash_one_length`'s.)"""
    counts = np.bincount(lengths)
    present = np.flatnonzero(counts)
    if len(present) <= _FEW_LENGTHS:
        return [np.flatnonzero(lengths == length) for length in present]
    order = np.argsort(lengths, kind="stable")
    return np.split(order, np.cumsum(counts[present])[:-1])


def _hash_integers(values: pa.Array, seed: np.uint32) -> tuple[np.ndarray, np.ndarray]:
    """Integers hash as their decimal text, digits made with numpy (no per-id Python call)."""
    present = values.is_valid().to_numpy(zero_copy_only=False)
    unsigned = pa.types.is_unsigned_integer(values.type)
    filled = pc.fill_null(values, 0).cast(pa.uint64() if unsigned else pa.int64())
    ints = filled.to_numpy(zero_copy_only=False)
    negative = np.zeros(len(ints), bool) if unsigned else ints < 0
    # Two's complement: -x as uint64 is exact even for int64's minimum, unlike np.abs.
    magnitude = ints.astype(np.uint64)
    magnitude[negative] = ~magnitude[negative] + np.uint64(1)
    lengths = np.searchsorted(_POW10, magnitude, side="right") + 1 + negative
    out = np.empty(len(ints), np.uint32)
    for length in np.flatnonzero(np.bincount(lengths)):
        rows = np.flatnonzero(lengths == length)
        keys = _decimal_bytes(magnitude[rows], negative[rows], int(length))
        out[rows] = _murmur3_fixed(keys, len(rows), int(length), seed)
    return out, present


def _decimal_bytes(magnitude: np.ndarray, negative: np.ndarray, length: int) -> np.ndarray:
    """[n, length] ASCII of ids whose text is `length` bytes long ("-" then digits if negative).

    Four digits at a time from a table of "0000".."9999" as uint32 words, written right-aligned
    into whole words: byte gathers and uint64 divmod are what would make this slow.
    """
    words = -(-length // 4)
    buf = np.empty((len(magnitude), words), np.uint32)
    rest = magnitude.copy()
    for j in range(words - 1, -1, -1):
        quotient = rest // _TEN_THOUSAND
        buf[:, j] = _DIGITS4[(rest - quotient * _TEN_THOUSAND).astype(np.intp)]
        rest = quotient
    keys = buf.view(np.uint8)[:, 4 * words - length :]
    keys[negative, 0] = ord("-")  # a negative id's magnitude has one digit fewer: col 0 is "0"
    return keys


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U32(r)) | (x >> _U32(32 - r))


def _murmur3_fixed(keys: np.ndarray | None, n: int, length: int, seed: np.uint32) -> np.ndarray:
    """murmur3_x86_32 of n keys of the same byte length (rows of a [n, length] uint8 matrix)."""
    h = np.full(n, seed, np.uint32)
    num_blocks = length // 4
    if num_blocks:
        # Little-endian 4-byte blocks, laid out block-major so each step reads contiguously.
        blocks = np.ascontiguousarray(keys[:, : 4 * num_blocks]).view("<u4").astype(np.uint32)
        for k in np.ascontiguousarray(blocks.T):
            k *= _C1
            k = _rotl(k, 15)
            k *= _C2
            h ^= k
            h = _rotl(h, 13)
            h *= _U32(5)
            h += _U32(0xE6546B64)
    tail = length & 3
    if tail:
        k = np.zeros(n, np.uint32)
        for i in range(tail - 1, -1, -1):
            k ^= keys[:, 4 * num_blocks + i].astype(np.uint32) << _U32(8 * i)
        k *= _C1
        k = _rotl(k, 15)
        k *= _C2
        h ^= k
    h ^= _U32(length & 0xFFFFFFFF)
    return _fmix32(h)


def _fmix32(h: np.ndarray) -> np.ndarray:
    h ^= h >> _U32(16)
    h *= _U32(0x85EBCA6B)
    h ^= h >> _U32(13)
    h *= _U32(0xC2B2AE35)
    h ^= h >> _U32(16)
    return h
