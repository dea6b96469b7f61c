"""Three tiny days trained by `make train-days`' code (`run_days`): the real recipe, MLflow
store, exports and delta exports, shared by the days tests and `recsys-score --delta`'s
(the session fixture `trained_days` in tests/conftest.py trains them once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.compose import load_config
from recsys.train.days import DaysResult, run_days
from tests.synthetic import make_click_log, write_tiny_log

DAYS = 3
NEW_USERS = 1000  # day k brings users k * NEW_USERS + 1.., seen on that day only
MANAGED = [
    "data.tables.user_id.hashing=managed",
    "data.tables.user_id.num_buckets=96",
    "data.tables.user_id.managed.expire_after_days=1",
]


@dataclass(frozen=True)
class Days:
    root: Path
    folders: list[Path]
    result: DaysResult
    uri: str


def write_days(root: Path) -> list[Path]:
    """`root/days/day=0<k>/part-0.parquet` for k < DAYS: 400 rows of the tiny log's users and
    100 of users new that day."""
    folders = []
    for k in range(DAYS):
        folder = root / "days" / f"day=0{k}"
        folder.mkdir(parents=True)
        rows = pa.concat_tables(
            [make_click_log(400, seed=10 + k), make_click_log(100, seed=20 + k, user_offset=NEW_USERS * (k + 1))]
        )  # fmt: skip
        pq.write_table(rows, folder / "part-0.parquet")
        folders.append(folder)
    return folders


def train_days(root: Path) -> Days:
    """Write the days under `root` and train them, one epoch a day, into `root/out`."""
    folders = write_days(root)
    log = write_tiny_log(root)
    base = [o for o in log.overrides if not o.startswith(("data.train_path", "data.eval_path"))]
    uri = f"sqlite:///{root}/mlruns.db"
    overrides = base + MANAGED + [
        f"data.days='{root}/days/day=*'",
        "trainer.epochs=1",
        "trainer.first_order_stage=true",  # the default (day 1 trains it; later days warm-start)
        f"tracking.uri={uri}",
        "tracking.experiment=days",
    ]  # fmt: skip
    result = run_days(load_config(overrides, output_dir=str(root / "out")))
    return Days(root, folders, result, uri)


def day_rows(folder: Path) -> pa.Table:
    return pq.read_table(folder / "part-0.parquet")
