"""Which part of a libSVM / libFM / libFFM line is which column (`data.format=libsvm`).

A line is `label idx[:value] idx[:value] ...` (libSVM, libFM; a value left out is 1) or
`label field:idx:value ...` (libFFM). `data.columns` names the columns, one entry each:

    name            fields by position: the k-th entry is the k-th pair of every line
    name=I          the pair whose index is I
    name=I-J        the pairs whose index is in [I, J] (both included)
    name=field:F    the pairs of libFFM field F

Either every entry is a bare name (a positional layout: each line holds one pair per field, in
order, as the libFM files of Frappe or MovieLens-tag do) or every entry says `=...` (a layout
by index range or field; pairs that no entry claims are not read, as unlisted columns of a CSV
are not). The label is the first token of every line, read as the column `data.label.column`.

Kept free of pyarrow: the schema check (`recsys.schema.resolve`) and the reader
(`recsys.data.libsvm`) both parse the layout here, so a mistake is found before anything runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from recsys.config import ConfigError, FeatureKind

_ENTRY = re.compile(r"^(?P<name>[^=\s]+)(?:=(?P<where>.*))?$")
_RANGE = re.compile(r"^(?P<first>\d+)(?:-(?P<last>\d+))?$")
_FIELD = re.compile(r"^field:(?P<field>\d+)$")
SYNTAX = "`name` (by position), `name=I`, `name=I-J` (index range) or `name=field:F` (libFFM)"


@dataclass(frozen=True)
class LibsvmColumn:
    """Where one column's pairs are on a line: exactly one of position, index range, field."""

    name: str
    position: int | None = None  # the k-th pair of the line (0-based)
    first: int | None = None  # index range [first, last]
    last: int | None = None
    field: int | None = None  # libFFM field number

    def describe(self) -> str:
        if self.position is not None:
            return f"pair {self.position + 1} of the line"
        if self.field is not None:
            return f"field {self.field}"
        if self.first == self.last:
            return f"index {self.first}"
        return f"indices {self.first}-{self.last}"


@dataclass(frozen=True)
class LibsvmLayout:
    columns: tuple[LibsvmColumn, ...]

    @property
    def positional(self) -> bool:
        return self.columns[0].position is not None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> LibsvmColumn:
        return next(c for c in self.columns if c.name == name)


def parse_libsvm_layout(entries: Sequence[str] | None) -> LibsvmLayout:
    """`data.columns` of a libsvm data set, parsed and checked; errors name the entry."""
    if not entries:
        raise ConfigError(
            f"data.format=libsvm needs data.columns: one entry per column, {SYNTAX}; "
            f"e.g. data.columns=[user,item] or data.columns=['user=0-999','tags=1000-1999']."
        )
    columns = tuple(_parse_entry(i, str(e)) for i, e in enumerate(entries))
    kinds = {c.position is not None for c in columns}
    if len(kinds) > 1:
        raise ConfigError(
            f"data.columns {list(entries)}: mixes bare names (fields by position) with "
            f"`name=...` entries (by index or field); use one style for every entry."
        )
    names = [c.name for c in columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"data.columns names {repeated} more than once; give each one entry.")
    return LibsvmLayout(columns)


def _parse_entry(i: int, entry: str) -> LibsvmColumn:
    match = _ENTRY.match(entry.strip())
    where = match and match.group("where")
    if match and where is None:
        return LibsvmColumn(match.group("name"), position=i)
    span = where is not None and _RANGE.match(where.strip())
    if span:
        first = int(span.group("first"))
        last = int(span.group("last") or first)
        if last < first:
            raise ConfigError(f"data.columns[{i}]={entry!r}: the range {first}-{last} is empty.")
        return LibsvmColumn(match.group("name"), first=first, last=last)
    field = where is not None and _FIELD.match(where.strip())
    if field:
        return LibsvmColumn(match.group("name"), field=int(field.group("field")))
    raise ConfigError(f"data.columns[{i}]={entry!r} is not {SYNTAX}.")


def check_libsvm_columns(
    layout: LibsvmLayout, label: str | None, kinds: Mapping[str, set[FeatureKind]]
) -> None:
    """The label and the features' columns fit the layout; a column has one kind of values.

    Args:
        layout: the parsed `data.columns`.
        label: the label column (the first token of a line), or None when it is not read.
        kinds: every feature column -> the kinds of the features that read it.
    """
    if label is not None and label in layout.names:
        raise ConfigError(
            f"data.columns names the label column '{label}': the label is always the first "
            f"token of a libsvm line; drop it from data.columns."
        )
    missing = sorted(c for c in kinds if c not in layout.names)
    if missing:
        raise ConfigError(
            f"column(s) {missing} read by data.features are not in data.columns "
            f"{list(layout.names)}; add them ({SYNTAX}) or fix the features' `column`."
        )
    for column, found in kinds.items():
        if len(found) > 1:
            raise ConfigError(
                f"column '{column}' feeds features of kinds {sorted(k.value for k in found)}; "
                f"a libsvm column holds one thing (values: dense, one index: id, indices: "
                f"id_list): give each kind its own entry in data.columns (e.g. "
                f"'{column}_ids=...' with the same range)."
            )
