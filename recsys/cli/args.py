"""Argument types shared by the command-line tools (`recsys-data`, `python -m data_tools.*`)."""

from __future__ import annotations

import argparse


def count(text: str) -> int:
    """A count written as 1000000, 1_000_000 or 1e6."""
    value = float(text.replace("_", ""))
    if value != int(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole, non-negative number")
    return int(value)


def counts(text: str) -> tuple[int, ...]:
    """Counts separated by commas: 1e3,1e5."""
    return tuple(count(t) for t in text.split(","))


__all__ = ["count", "counts"]
