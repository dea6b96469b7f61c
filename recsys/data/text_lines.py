"""Byte-level line handling under the text reader (`recsys.data.text`).

Here live the pieces that only see bytes and line breaks, never a format or a schema: finding
line starts in a seekable file (so byte-range units meet on whole lines), reading or skipping
a header line, counting line breaks for error messages, a file-like view of a byte range, and
`PaddedLines`, which gives Criteo lines whose trailing empty fields were stripped their
missing fields back (also used by `data_tools.criteo`). Values hold no quoted line breaks.
"""

from __future__ import annotations

import io

import numpy as np

_CHUNK = 1 << 16


class PaddedLines(io.RawIOBase):
    """A text stream whose lines with too few fields get their missing trailing ones.

    Tools that write Criteo-layout logs sometimes strip a line's trailing empty fields (a row
    whose last ids are missing ends early). Such a line only lacks missing values: this pads it
    with empty fields (missing) up to `fields`, so the CSV parser reads it as a whole row, and
    counts it (`padded`). Lines with too many fields are left alone: those stay bad rows. Works
    on whole lines of `block` bytes at a time, counting fields with numpy (no quoting: the
    Criteo layout has none); blank lines stay blank.
    """

    def __init__(self, raw, sep: bytes, fields: int, block: int = 1 << 22):
        super().__init__()
        self.raw, self.sep, self.fields, self.block = raw, sep[0], fields, block
        self.padded = 0
        self.example: str | None = None
        self._out = bytearray()
        self._carry = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while (n is None or n < 0 or len(self._out) < n) and not self._eof:
            chunk = self.raw.read(self.block)
            if not chunk:
                self._eof, data, self._carry = True, self._carry, b""
            else:
                data = self._carry + chunk
                cut = data.rfind(b"\n") + 1
                data, self._carry = data[:cut], data[cut:]
            if data:
                self._out += self._pad(data)
        n = len(self._out) if n is None or n < 0 else min(n, len(self._out))
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def _pad(self, data: bytes) -> bytes:
        """Whole lines (the last one may lack its line break only at the end of the stream)."""
        arr = np.frombuffer(data, np.uint8)
        ends = np.flatnonzero(arr == 10)
        if not len(ends) or ends[-1] != len(arr) - 1:
            ends = np.append(ends, len(arr))  # a last line without line break
        starts = np.concatenate([[0], ends[:-1] + 1])
        cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
        body_ends = ends - cr  # before "\r\n"
        # Separators per line: those before its end, less those before the previous end.
        before_end = np.searchsorted(np.flatnonzero(arr == self.sep), ends)
        found = np.diff(before_end, prepend=0)
        missing = np.where(body_ends > starts, self.fields - 1 - found, 0)
        short = missing > 0
        if not short.any():
            return data
        self.padded += int(short.sum())
        if self.example is None:
            first = int(np.flatnonzero(short)[0])
            self.example = data[starts[first] : body_ends[first]][:120].decode("utf-8", "replace")
        at = np.repeat(body_ends[short], missing[short])
        return np.insert(arr, at, self.sep).tobytes()

    def describe(self) -> str:
        return (
            f"{self.padded} line(s) with fewer than {self.fields} fields (e.g. "
            f"{self.example!r}) read with their missing trailing fields as missing values"
        )


class ByteRange(io.RawIOBase):
    """A file-like view of `length` bytes of a stream (all of it when length is None)."""

    def __init__(self, f, length: int | None):
        super().__init__()
        self.f, self.left = f, length

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.left is not None:
            n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n) if n is None or n >= 0 else self.f.read()
        if self.left is not None:
            self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()
        super().close()


def line_start(f, pos: int) -> int:
    """The first line start at or after `pos`."""
    if pos <= 0:
        return 0
    f.seek(pos - 1)
    offset = pos - 1
    while chunk := f.read(_CHUNK):
        i = chunk.find(b"\n")
        if i >= 0:
            return offset + i + 1
        offset += len(chunk)
    return offset


def last_line_start(f, size: int) -> int | None:
    """Where the last line starts when it has no closing line break, else None."""
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return None
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        f.seek(start)
        i = f.read(end - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


def count_line_breaks(f, end: int) -> int:
    """Line breaks in the next `end` bytes of `f` (a file just opened: those before byte `end`)."""
    count, pos = 0, 0
    while pos < end:
        chunk = f.read(min(_CHUNK * 16, end - pos))
        count, pos = count + chunk.count(b"\n"), pos + len(chunk)
    return count


def read_line(f) -> bytes:
    """The first line of a stream, line break included (bounded reads, not the whole file)."""
    line = b""
    while chunk := f.read(4096):
        i = chunk.find(b"\n")
        if i >= 0:
            return line + chunk[: i + 1]
        line += chunk
    return line


def skip_line(f) -> None:
    """Consume one line of a stream that cannot seek back (byte by byte: a header is short)."""
    while (byte := f.read(1)) and byte != b"\n":
        pass
