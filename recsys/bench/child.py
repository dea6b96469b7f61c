"""Benchmark steps in a fresh process: peak RSS, threads and allocator state start clean.

The child prints one JSON object on its last stdout line; the parent reads it back.
"""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(module: str, args: list[str], what: str) -> dict:
    """`python -m module *args` in a new process; the JSON object its last stdout line holds.
    A failed child raises, naming `what` and quoting the end of its stderr."""
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


__all__ = ["run_child"]
