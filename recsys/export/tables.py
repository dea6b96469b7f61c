"""Export tables written from shards: every rank writes the rows it holds, a chunk at a time.

A table file is the `.npy` the scorer reads (`tables/<name>.npy`: [num_buckets, dim], row b =
hash bucket b). The writing rank creates it at its full size; every rank then writes the
rows and columns of the shards it holds at their offsets (`write_blocks`: row-, column- and
table-wise shards alike); conversions (fp16, int8, first-order sums) and checksums read the
file back a chunk at a time. No rank ever holds a whole table and nothing travels between
ranks but barriers: the ranks must see the same folder (as for checkpoints).

Memory: a chunk is at most `CHUNK_BYTES`. Contiguous rows go out with `os.pwrite`; a shard
holding some columns of each row is written through a memory map of one chunk of rows, unmapped
before the next, so no file page stays mapped into the process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHUNK_BYTES = 64 << 20  # float32 rows written at a time (views: written without a copy)
CONVERT_BYTES = 16 << 20  # rows encoded at a time (int8 makes a few temporaries of this size)

Block = tuple[int, int, Any]  # first row, first column, [n, d] tensor or array of this rank


@dataclass(frozen=True)
class TableShards:
    """The blocks of one [rows, columns] table this rank holds (none: another rank's table)."""

    shape: tuple[int, int]
    blocks: list[Block] = field(default_factory=list)

    def columns(self, wanted: slice) -> TableShards:
        """The same table cut to the columns `wanted` (a step-1 slice): each block's views."""
        start, stop, _ = wanted.indices(self.shape[1])
        if (start, stop) == (0, self.shape[1]):
            return self
        blocks = []
        for row, column, block in self.blocks:
            first, end = max(start, column), min(stop, column + block.shape[1])
            if first < end:
                blocks.append((row, first - start, block[:, first - column : end - column]))
        return TableShards((self.shape[0], stop - start), blocks)

    @staticmethod
    def of(table: Any) -> TableShards:
        """A whole table (tensor or array) held by this rank, or TableShards as they are."""
        if isinstance(table, TableShards):
            return table
        return TableShards((int(table.shape[0]), int(table.shape[1])), [(0, 0, table)])


@dataclass(frozen=True)
class ExportGroup:
    """The ranks writing one export together. `barrier` returns once every rank called it;
    `token` is the same on every rank (it names the staging folder)."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = lambda: None
    token: str = field(default_factory=lambda: str(os.getpid()))

    @property
    def is_writer(self) -> bool:
        """The rank that creates, converts, checksums and publishes the files."""
        return self.rank == 0


def rows_per_chunk(row_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(1, chunk_bytes // max(row_bytes, 1))


def create_npy(path: Path, shape: tuple[int, ...], dtype: Any) -> None:
    """An `.npy` file of `shape` (C order) whose data is left to be written (reads as zeros)."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(n) for n in shape),
    }
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.truncate(f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)


def npy_layout(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """Where an `.npy` file's data starts, its shape and dtype."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not export tables")
        return f.tell(), tuple(shape), dtype


def write_blocks(path: Path, shards: TableShards, chunk_bytes: int = CHUNK_BYTES) -> None:
    """This rank's blocks of a table into its float32 `.npy` file (made by `create_npy`)."""
    offset, (rows, columns), dtype = npy_layout(path)
    row_bytes = columns * dtype.itemsize
    for first_row, first_column, block in shards.blocks:
        n, width = int(block.shape[0]), int(block.shape[1])
        if first_row + n > rows or first_column + width > columns:
            raise ValueError(
                f"{path}: block at ({first_row}, {first_column}) of shape ({n}, {width}) lies "
                f"outside the table's ({rows}, {columns})"
            )
        step = rows_per_chunk(width * dtype.itemsize, chunk_bytes)
        for start in range(0, n, step):
            chunk = as_numpy(block[start : start + step], dtype)
            at = offset + (first_row + start) * row_bytes
            if width == columns:
                _pwrite(path, chunk, at)
            else:
                window = np.memmap(path, dtype, "r+", offset=at, shape=(len(chunk), columns))
                window[:, first_column : first_column + width] = chunk
                window.flush()
                del window  # unmapped: its pages leave this process


def as_numpy(block: Any, dtype: Any = np.float32) -> np.ndarray:
    """A chunk of a tensor or array as a C-contiguous numpy array of `dtype` (no copy when it
    is one already)."""
    if isinstance(block, torch.Tensor):
        block = block.detach().to("cpu", torch.float32 if dtype == np.float32 else None).numpy()
    return np.ascontiguousarray(block, dtype=dtype)


def _pwrite(path: Path, array: np.ndarray, at: int) -> None:
    view = memoryview(array).cast("B")
    fd = os.open(path, os.O_WRONLY)
    try:
        while len(view):
            written = os.pwrite(fd, view, at)
            view, at = view[written:], at + written
    finally:
        os.close(fd)


def read_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of an `.npy` table, read (not memory-mapped) a chunk at a time."""
    offset, shape, dtype = npy_layout(path)
    row_items = int(np.prod(shape[1:], dtype=np.int64))
    step = rows_per_chunk(row_items * dtype.itemsize, chunk_bytes)
    with open(path, "rb") as f:
        for start in range(0, shape[0], step):
            n = min(step, shape[0] - start)
            f.seek(offset + start * row_items * dtype.itemsize)
            chunk = np.fromfile(f, dtype=dtype, count=n * row_items)
            yield start, chunk.reshape((n, *shape[1:]))


def convert_file(
    source: Path, targets: dict[Path, np.dtype], convert: Callable[[np.ndarray], tuple]
) -> None:
    """Stream `source` through `convert` (rows -> one array per target, in order) into new
    `.npy` files of those dtypes; each target's shape is its first chunk's columns."""
    _, (rows, *_), _ = npy_layout(source)
    opened = False
    for start, chunk in read_chunks(source, CONVERT_BYTES):
        outputs = convert(chunk)
        for (path, dtype), out in zip(targets.items(), outputs, strict=True):
            if not opened:
                create_npy(path, (rows, *out.shape[1:]), dtype)
            _pwrite(path, np.ascontiguousarray(out, dtype=dtype), _data_at(path, start))
        opened = True


def _data_at(path: Path, row: int) -> int:
    offset, shape, dtype = npy_layout(path)
    return offset + row * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
