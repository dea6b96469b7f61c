"""Smaller serving tables: how an export stores its embedding rows, and how they are read back.

    fp32   float32 [num_buckets, dim], as trained
    fp16   float16 [num_buckets, dim]
    int8   uint8 codes [num_buckets, dim] plus float32 [num_buckets, 2] (scale, bias) per row:
           row[b] = codes[b] * scale[b] + bias[b]   (row-wise affine over the row's min..max)

Row-wise rather than per-table parameters: hashed tables mix rows of very different norms
(rare ids stay near their init, popular ones grow), and one table-wide range would spend the
256 levels on the few large rows.

First-order (bias) tables hold one value per row, so row-wise int8 would cost 8 bytes of
scale and bias per 1 byte of code: under fp16 and int8 they are stored as float16.

Readers gather rows first and dequantize only those, so memory-mapped tables stay untouched
outside the rows a batch hashes to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.config import TableDtype
from recsys.export.manifest import MANIFEST_FILE, ExportError, export_file, load_array

LEVELS = 255  # uint8 codes 0..255
ROW_PARAMS_LAYOUT = "float32 [num_buckets, 2]: scale, bias; row = codes * scale + bias"
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class Encoded:
    """A table as stored: `values` (float32, float16 or uint8 codes) and, for int8, the
    per-row (scale, bias) it decodes with."""

    values: np.ndarray
    row_params: np.ndarray | None = None


def quantize_rows(weight: np.ndarray) -> Encoded:
    """Row-wise affine uint8: q = round((x - min) / scale), scale = (max - min) / 255, bias = min.

    A row whose values are all equal (the missing-id row 0 when it is all zeros, rows never
    trained under a zero init) gets scale 0 and codes 0, and decodes exactly to its value.
    Every element decodes within scale / 2 of the original (plus float32 rounding).
    """
    weight = np.asarray(weight, dtype=np.float32)
    low = weight.min(axis=1, keepdims=True)
    scale = (weight.max(axis=1, keepdims=True) - low) / np.float32(LEVELS)
    safe = np.where(scale > 0, scale, np.float32(1))  # all-equal rows: (x - low) is 0 anyway
    codes = np.clip(np.rint((weight - low) / safe), 0, LEVELS).astype(np.uint8)
    params = np.concatenate([scale, low], axis=1).astype(np.float32)
    return Encoded(codes, params)


def dequantize_rows(codes: np.ndarray, row_params: np.ndarray) -> np.ndarray:
    """float32 rows back from uint8 codes [n, dim] and their (scale, bias) [n, 2]."""
    params = np.asarray(row_params, dtype=np.float32)
    return codes.astype(np.float32) * params[:, :1] + params[:, 1:]


def encode(weight: np.ndarray, dtype: TableDtype, table: str) -> Encoded:
    """A float32 table as `dtype` stores it; non-finite or fp16-overflowing weights are an error
    naming the table (they would decode to garbage, silently)."""
    weight = np.asarray(weight, dtype=np.float32)
    dtype = TableDtype(dtype)
    if dtype is TableDtype.fp32:
        return Encoded(weight)
    if not np.isfinite(weight).all():
        raise ValueError(
            f"table {table!r} has non-finite weights; it cannot be stored as {dtype.value}. "
            f"Look at the run's training (learning rate, loss); export.table_dtype=fp32 keeps "
            f"the weights as they are."
        )
    if dtype is TableDtype.int8:
        return quantize_rows(weight)
    if np.abs(weight).max(initial=0.0) > FP16_MAX:
        raise ValueError(
            f"table {table!r} has weights beyond float16's range (|w| > {FP16_MAX:g}); use "
            f"export.table_dtype=fp32 (or int8, unless it is a first-order table: those are "
            f"stored as float16 under int8 too)."
        )
    return Encoded(weight.astype(np.float16))


def first_order_dtype(dtype: TableDtype) -> TableDtype:
    """How a bias table is stored when the embedding tables are `dtype` (see module doc)."""
    return TableDtype.fp32 if TableDtype(dtype) is TableDtype.fp32 else TableDtype.fp16


# ------------------------------------------------------------------------------- reading


class Rows:
    """A stored table, read by gathering rows: `rows[ids]` is float32 [len(ids), dim]."""

    shape: tuple[int, int]

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def full(self) -> np.ndarray:
        """The whole table as float32 (warm start, checks); serving should gather instead."""
        return self[np.arange(self.shape[0])]


class FloatRows(Rows):
    """float32 or float16 rows (memory-mapped or in memory)."""

    def __init__(self, values: np.ndarray):
        self.values = values
        self.shape = tuple(values.shape)

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.values[ids], dtype=np.float32)


class Int8Rows(Rows):
    """uint8 codes and per-row (scale, bias); a lookup decodes only the rows it gathers."""

    def __init__(self, codes: np.ndarray, row_params: np.ndarray):
        if codes.shape[0] != row_params.shape[0] or row_params.shape[1:] != (2,):
            raise ValueError(
                f"int8 table of shape {codes.shape} needs (scale, bias) of shape "
                f"({codes.shape[0]}, 2), got {row_params.shape}."
            )
        self.codes, self.row_params = codes, row_params
        self.shape = tuple(codes.shape)

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        return dequantize_rows(self.codes[ids], self.row_params[ids])


def stored_dtype(entry: dict[str, Any]) -> TableDtype:
    """A manifest table entry's dtype; entries without one (format version 1) are float32."""
    try:
        return TableDtype(entry.get("dtype", TableDtype.fp32))
    except ValueError as e:
        raise ExportError(
            f"{MANIFEST_FILE}: {entry.get('file')} has dtype {entry.get('dtype')!r}, not one of "
            f"{[d.value for d in TableDtype]}; it was written by a newer recsys: upgrade recsys "
            f"or export again."
        ) from e


def load_rows(export_dir: Path, entry: dict[str, Any], mmap: bool = True) -> Rows:
    """A table of the manifest (`tables.<name>`, or its `first_order` entry) as `Rows`."""
    dtype = stored_dtype(entry)
    values = _load(export_dir, entry["file"], _NUMPY_DTYPE[dtype], mmap)
    if dtype is not TableDtype.int8:
        return FloatRows(values)
    return Int8Rows(values, _load(export_dir, entry["row_params"]["file"], np.float32, mmap))


_NUMPY_DTYPE = {TableDtype.fp32: np.float32, TableDtype.fp16: np.float16, TableDtype.int8: np.uint8}


def _load(export_dir: Path, name: str, want: type, mmap: bool) -> np.ndarray:
    """A table file that holds what the manifest says it holds (a float32 table read as uint8
    codes, or the reverse, would score garbage without an error)."""
    path = export_file(export_dir, name)
    array = load_array(path, mmap)
    if array.dtype != want:
        raise ExportError(
            f"{path} holds {array.dtype}, but {MANIFEST_FILE} says {np.dtype(want)}; the export "
            f"was edited or is corrupted. Copy the export again from its source, or export again."
        )
    return array
