"""Tiny MovieLens-shaped click logs drawn from a planted model (data made by tests, not fetched)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_tools.history import with_history

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller"]
OCCUPATIONS = ["artist", "doctor", "engineer", "student", "writer", "other"]


@dataclass(frozen=True)
class TinyLog:
    train: Path
    eval: Path
    overrides: list[str]  # Hydra overrides that point data=movielens at these files


def make_click_log(
    num_rows: int,
    seed: int,
    num_users: int = 60,
    num_items: int = 80,
    user_offset: int = 0,
    history: bool = True,
) -> pa.Table:
    """Rows with the columns of `recsys-data movielens`, labels from a planted logistic model.

    Users and items carry latent factors and biases, so a model that learns ids beats chance.
    `user_offset` shifts user ids, to make ids that training never saw. `history` adds the
    history columns (data_tools.history) from these rows alone; without, add them to the
    whole log (all splits) as `recsys-data movielens` does.
    """
    rng = np.random.default_rng(seed)
    model = np.random.default_rng(1234)  # the planted model is the same for every split
    user_vec, item_vec = model.normal(size=(num_users, 4)), model.normal(size=(num_items, 4))
    item_bias = model.normal(size=num_items)
    users = rng.integers(0, num_users, num_rows)
    items = rng.integers(0, num_items, num_rows)
    logit = (user_vec[users] * item_vec[items]).sum(1) * 0.7 + item_bias[items]
    labels = (rng.random(num_rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    genre_sets = [[GENRES[(i + k) % len(GENRES)] for k in range(i % 3)] for i in range(num_items)]
    table = pa.table(
        {
            "label": pa.array(labels, pa.int8()),
            "user_id": pa.array(users + 1 + user_offset, pa.int64()),
            "item_id": pa.array(items + 1, pa.int64()),
            "timestamp": pa.array(np.arange(num_rows, dtype=np.int64) + seed * 10**6),
            "rating": pa.array(np.where(labels == 1, 4, 2), pa.int8()),
            "gender": pa.array(np.where(users % 2 == 0, "M", "F")),
            "age": pa.array(18 + users % 40, pa.int64()),
            "age_bucket": pa.array([f"b{u % 5}" for u in users]),
            "occupation": pa.array([OCCUPATIONS[u % len(OCCUPATIONS)] for u in users]),
            "zip_prefix": pa.array([f"{(u * 7) % 100:03d}" for u in users]),
            "genres": pa.array([genre_sets[i] for i in items], pa.list_(pa.string())),
            "release_year": pa.array(
                [None if i % 17 == 0 else 1990 + i % 9 for i in items], pa.int64()
            ),
        }
    )
    return with_movielens_history(table) if history else table


def with_movielens_history(table: pa.Table) -> pa.Table:
    return with_history(table, keys=("user_id", "item_id"), time="timestamp", label="label")


#: The MovieLens config's history features (data_tools.history): a test that needs the ids
#: to carry the signal turns them off, as they give away each item's planted bias.
HISTORY_FEATURES = ("user_prior_like_rate", "item_prior_like_rate")


def write_tiny_log(tmp_path: Path, history: bool = True) -> TinyLog:
    """3000 training rows in uneven row groups; 1000 eval rows, 200 of them from unseen users.

    `history=False` trains without the MovieLens config's history features.
    """
    train, evaluation = tmp_path / "data" / "train.parquet", tmp_path / "data" / "eval.parquet"
    train.parent.mkdir()
    whole = with_movielens_history(
        pa.concat_tables(
            [
                make_click_log(3000, seed=1, history=False),
                make_click_log(800, seed=2, history=False),
                make_click_log(200, seed=3, user_offset=10_000, history=False),
            ]
        )
    )
    pq.write_table(whole.slice(0, 3000), train, row_group_size=700)
    pq.write_table(whole.slice(3000), evaluation, row_group_size=300)
    overrides = [
        f"data.train_path={train}",
        f"data.eval_path={evaluation}",
        "trainer.batch_size=128",
        "trainer.eval_batch_size=256",
        "trainer.log_every_n_steps=5",
        "trainer.progress_bar=false",
        # Tiny data needs bolder steps than the MovieLens defaults to learn in a few epochs,
        # and has no time order worth keeping: shuffle it (seed spread of eval AUC ~0.005).
        "trainer.sparse_lr=0.05",
        "model.dropout=0.0",
        "trainer.epochs=4",
        "trainer.shuffle_buffer=4096",
        "trainer.shuffle_files=true",
        "data.tables.user_id.num_buckets=512",
        "data.tables.item_id.num_buckets=512",
        # One run, not two: tests of the first-order stage (on by default) ask for it.
        "trainer.first_order_stage=false",
    ]
    if not history:
        overrides += [f"~data.features.{name}" for name in HISTORY_FEATURES]
    return TinyLog(train, evaluation, overrides)


REPO_ROOT = Path(__file__).resolve().parents[1]


def make_train(nproc: int, out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """`make train NPROC=n`, the users' command: torchrun, gloo, one run folder."""
    args = " ".join(overrides)
    cmd = [
        "make",
        "-s",
        "-C",
        str(REPO_ROOT),
        "train",
        f"NPROC={nproc}",
        f"RUN_DIR={out}",
        f"ARGS={args}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
