"""How `recsys-data infer-schema` guesses the label and each column's kind from its profile.

Pass 1 of `recsys.data.infer` profiles every column (`recsys.data.profile`); the rules here
turn one profile into a guess, each with the reason written beside its feature in the YAML:

    label    --label, or the first 0/1 column named like label, click(ed), target, y, ...
    id_list  a list column, or text whose values are joined by "|" or ";" (>= 10% of them)
    id       text (numbers with a leading zero, "021", are text); integers named like an id
             (user_id, itemId, uid, ...); integers with at most 16 distinct values (flags,
             codes, small ordinals)
    dense    other numbers; transform log1p when they look like counts: at most 1% negative,
             a heavy tail (max >= 100 and >= 10 x mean)
    skipped  time stamps (by type or name, or integers that all read as date codes:
             YYMMDDHH, YYYYMMDD[HH], Unix seconds or milliseconds; as a number they only
             grow with time, so eval rows lie past every trained value), row keys (text or
             id-named integers whose values never repeat within a block of rows read and
             are >= 90% distinct overall: an id seen once teaches nothing), constant or
             empty columns, nested or binary values, other columns named like a label
             (outcomes: features would leak them)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import pyarrow.types as pat

from recsys.config import ConfigError, DenseTransform, FeatureKind
from recsys.data.profile import ColumnProfile

LABEL_NAMES = ("label", "click", "clicked", "clicks", "is_click", "clk", "target", "y")
LABEL_NAMES += ("conversion", "converted", "is_converted")
TIME_NAMES = ("timestamp", "time", "ts", "date", "datetime", "event_time", "created_at")
FEW_DISTINCT = 16  # integer columns with at most this many values are read as ids
# A row key: no value twice within any block read, and this share distinct overall. Not the
# share alone: a long-tailed id (most ids once, a head seen often) still teaches through its head.
ROW_KEY_SHARE = 0.9
ROW_KEY_MIN_ROWS = 1000  # fewer rows say little: in a small sample most ids are unique
_DATE_CODES = {  # digits -> (strptime layout, name)
    8: (("%y%m%d%H", "YYMMDDHH"), ("%Y%m%d", "YYYYMMDD")),
    10: (("%Y%m%d%H", "YYYYMMDDHH"),),
}
_UNIX_SECONDS = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01
_ID_NAME = re.compile(
    r"(^|[_\-. ])(id|uid|ids)$|(user|item|ad|session|device|app|product|movie|song|article|doc"
    r"|query|page|campaign|creative|site|advertiser)_?id$"
)


@dataclass(frozen=True)
class Guess:
    column: str
    kind: FeatureKind | None  # None: not a feature (skipped)
    reason: str
    transform: DenseTransform = DenseTransform.none
    delimiter: str | None = None


def guess_label(
    profiles: dict[str, ColumnProfile],
    columns: list[str],
    label: str | None,
    threshold: float | None,
) -> tuple[str, float | None]:
    """The label column and its threshold: `label` (--label) checked, or the first 0/1
    column named like a label."""
    if label is not None:
        profile = profiles.get(label)
        if profile is None:
            raise ConfigError(f"--label {label}: no such column; columns: {columns}.")
        if threshold is None and not profile.zero_one():
            values = sorted(profile.small) if profile.small is not None else "many values"
            raise ConfigError(
                f"--label {label}: not every value is 0 or 1 ({values}); pass "
                f"--threshold T (label = value >= T) or write a 0/1 column."
            )
        return label, threshold
    for name in columns:
        if name.lower() in LABEL_NAMES and name in profiles and profiles[name].zero_one():
            return name, None
    flags = [n for n in columns if n in profiles and profiles[n].zero_one()]
    raise ConfigError(
        f"no label column found (a 0/1 column named one of {list(LABEL_NAMES)}); pass "
        f"--label COL. Columns: {columns}; of them 0/1: {flags or 'none'}."
    )


def guess_column(
    name: str, profile: ColumnProfile | None, ids: tuple[str, ...], dense: tuple[str, ...]
) -> Guess:
    """The kind of one column (None: skipped), `ids` / `dense` being the columns forced to
    that kind (--id, --dense)."""
    if profile is None:
        return Guess(name, None, "skipped: nested or binary values")
    if name in ids:
        return Guess(name, _sparse_kind(profile), "--id")
    if name in dense:
        if not profile.numeric:
            raise ConfigError(f"--dense {name}: the column holds values that are not numbers.")
        return Guess(name, FeatureKind.dense, f"--dense; {_range(profile)}", _transform(profile))
    if name.lower() in LABEL_NAMES:
        return Guess(name, None, "skipped: named like a label, an outcome (--id to keep)")
    if profile.present == 0 or profile.distinct < 1.5:
        return Guess(name, None, "skipped: constant or empty")
    temporal = profile.type is not None and pat.is_temporal(profile.type)
    if temporal or name.lower() in TIME_NAMES:
        return Guess(name, None, "skipped: looks like a time stamp (--id or --dense to keep)")
    if profile.is_list:
        return Guess(name, FeatureKind.id_list, "list")
    if not profile.numeric:
        for d, count in profile.delimited.items():
            if count >= 0.1 * profile.present:
                return Guess(name, FeatureKind.id_list, f"{d!r}-joined lists", delimiter=d)
        return _unless_row_key(Guess(name, FeatureKind.id, "text"), profile)
    if _ID_NAME.search(name.lower()) or re.search(r"[a-z]Id$", name):
        return _unless_row_key(Guess(name, FeatureKind.id, "named like an id"), profile)
    if profile.integral and round(profile.distinct) <= FEW_DISTINCT:
        return Guess(name, FeatureKind.id, f"{_range(profile)}: few values")
    if profile.integral and (code := _time_code(profile.low, profile.high)):
        reason = f"{_range(profile)} read as {code}"
        return Guess(
            name, None, f"skipped: looks like a time stamp ({reason}; --id or --dense to keep)"
        )
    return Guess(name, FeatureKind.dense, _range(profile), _transform(profile))


def _unless_row_key(guess: Guess, profile: ColumnProfile) -> Guess:
    """Skipped instead when every row has its own value (a request or event id)."""
    few = profile.present < ROW_KEY_MIN_ROWS
    if few or profile.repeats or profile.distinct < ROW_KEY_SHARE * profile.present:
        return guess
    return Guess(
        guess.column,
        None,
        f"skipped: looks like a row key (~{profile.distinct:,.0f} distinct in "
        f"{profile.present:,} rows: an id seen once teaches nothing; --id to keep)",
    )


def _time_code(low: float, high: float) -> str | None:
    """How integers from `low` to `high` read as time stamps, or None when they do not."""
    for scale, unit in ((1, "Unix seconds"), (1000, "Unix milliseconds")):
        if _UNIX_SECONDS[0] * scale <= low <= high < _UNIX_SECONDS[1] * scale:
            return unit
    digits = len(str(int(low)))
    for layout, layout_name in _DATE_CODES.get(digits, ()):
        if len(str(int(high))) == digits and all(_is_date(v, layout) for v in (low, high)):
            return layout_name
    return None


def _is_date(value: float, layout: str) -> bool:
    try:
        datetime.strptime(str(int(value)), layout)
    except ValueError:
        return False
    return True


def _sparse_kind(profile: ColumnProfile) -> FeatureKind:
    return FeatureKind.id_list if profile.is_list else FeatureKind.id


def _transform(profile: ColumnProfile) -> DenseTransform:
    tail = profile.high >= max(100.0, 10 * profile.mean)
    counts = profile.negatives <= 0.01 * profile.present and tail
    return DenseTransform.log1p if counts else DenseTransform.none


def _range(profile: ColumnProfile) -> str:
    what = "integers" if profile.integral else "numbers"
    return f"{what} {profile.low:.10g}..{profile.high:.10g}"
