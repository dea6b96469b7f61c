"""`recsys-score EXPORT_DIR INPUT OUTPUT`: click probabilities for raw records from an export.

INPUT is read as the training data was (the export's manifest records data.format, header and
columns); `--format` reads it as another format instead. Never guessed from the file name.

With `--delta DIR` (repeatable) the model is EXPORT_DIR with the delta exports `make train-days`
wrote after it (`day_<d>_<name>/delta`) applied in the order given: each is checked to follow
the one before, and a broken chain is an error naming the delta.

With `--tower user|item` (two-tower exports, model=mf) it writes one side's vectors instead:
OUTPUT gets a `vector` and a `bias` per input row, and INPUT needs only that side's columns.

Imports neither torchrec nor the training code: a serving box needs torch, numpy, pyarrow.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recsys.config import DataFormat
from recsys.data.featurize import DataError
from recsys.export.manifest import ExportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-score", description=__doc__.splitlines()[0])
    parser.add_argument(
        "export_dir", type=Path, help="a serving export (folder with manifest.json)"
    )
    parser.add_argument(
        "input",
        help="raw records (file, folder, glob or URI) with the training data's columns",
    )
    parser.add_argument(
        "output", type=Path, help="Parquet file to write, one `score` per input row, in order"
    )
    parser.add_argument(
        "--batch-rows", type=int, default=65536, help="rows scored at a time (memory bound)"
    )
    parser.add_argument(
        "--format",
        choices=[f.value for f in DataFormat],
        help="read INPUT as this format (default: the training data's, from the manifest)",
    )
    parser.add_argument(
        "--delta",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a delta export (make train-days: day_<d>_<name>/delta) applied over EXPORT_DIR; "
        "repeat it for each day after EXPORT_DIR's, in the order they were written",
    )
    parser.add_argument(
        "--tower",
        choices=["user", "item"],
        help="write this side's two-tower vectors and biases instead of scores (model=mf)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from recsys.export.scorer import Scorer  # torch import: after argument errors surface

    try:
        scorer = Scorer(args.export_dir, deltas=args.delta)
        if args.tower:
            rows = scorer.tower_file(
                args.input, args.output, args.tower, args.batch_rows, args.format
            )
        else:
            rows = scorer.score_file(args.input, args.output, args.batch_rows, args.format)
    except (ExportError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{'scored' if not args.tower else args.tower + ' vectors of'} {rows} rows -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
