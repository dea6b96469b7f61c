"""`make train-days ARGS='data.days=PATH/day=* ...'`: train day after day (recsys.train.days).

Arguments are Hydra overrides, as for `recsys-train`. A `data.days=` value holding `=` or `*`
(`day=*`) is quoted here, so it needs no shell-and-Hydra double quoting.
"""

from __future__ import annotations

import logging
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from recsys.cli.train import _quiet_third_party
from recsys.compose import explain, load_config
from recsys.config import ConfigError, register_configs

log = logging.getLogger("recsys")
_DAYS = "data.days="


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party()
    register_configs()
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s][%(name)s] %(message)s")
    log.setLevel(logging.INFO)
    overrides = [quote_days(a) for a in (sys.argv[1:] if argv is None else argv)]
    from recsys.train.api import new_output_dir

    try:
        config = load_config(overrides, output_dir=str(new_output_dir()))
    except (ConfigError, OmegaConfBaseException, HydraException) as e:
        print(f"error: {explain(e)}", file=sys.stderr)
        return 2
    from recsys.data.featurize import DataError
    from recsys.tracking import TrackingError
    from recsys.train.days import run_days  # torchrec: after config errors surface

    try:
        result = run_days(config)
    except (ConfigError, DataError, TrackingError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 2
    print(result.summary())
    return 0


def quote_days(arg: str) -> str:
    """`data.days=PATH/day=*` -> `data.days='PATH/day=*'` (Hydra reads `=` and `*` otherwise)."""
    if not arg.startswith(_DAYS) or arg[len(_DAYS) :][:1] in ("'", '"'):
        return arg
    value = arg[len(_DAYS) :].replace("\\", "\\\\").replace("'", "\\'")
    return f"{_DAYS}'{value}'"


if __name__ == "__main__":
    raise SystemExit(main())
