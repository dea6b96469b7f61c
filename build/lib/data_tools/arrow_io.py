"""Small Arrow helpers shared by the data tools: exact-size re-chunking and atomic writes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa


class RowStream:
    """Hands out exactly `n` rows at a time from a stream of tables of any sizes.

    Holds at most one request plus one incoming table, so re-chunking costs bounded memory
    and the output's row-group sizes do not depend on how the rows were produced.
    """

    def __init__(self, tables: Iterator[pa.Table]):
        self._tables = tables
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def take(self, n: int) -> pa.Table | None:
        """The next `n` rows (fewer at the end of the stream), or None when it is exhausted."""
        while self._pending_rows < n:
            table = next(self._tables, None)
            if table is None:
                break
            self._pending.append(table)
            self._pending_rows += table.num_rows
        if not self._pending_rows:
            return None
        whole = pa.concat_tables(self._pending)
        out = whole.slice(0, min(n, whole.num_rows))
        rest = whole.slice(out.num_rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        return out.combine_chunks()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path`; rename it to `path` only on success.

    Readers never see a half-written file: the loader skips names that start with '.', and a
    crash leaves no file under the final name (the temporary one is removed).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
