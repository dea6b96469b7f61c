"""The learnable ceiling of a synthetic log: its planted model's own family, fitted on its rows.

    .venv/bin/python -m recsys.bench.ceiling --world pairwise --distinct 100 --rows 200000
    .venv/bin/python -m recsys.bench.ceiling --train data/synth/train --eval data/synth/eval

`p_true`'s AUC is the best any model could reach with infinitely many rows. With finitely many,
even a model that knows the planted structure (which columns carry per-id effects, which pairs
interact and at what rank, which counts matter) estimates it with error. This fits exactly that
family (per-id effects, rank-r factors per planted pair, a linear term per planted count) on the
training split, picks its L2 weight and epoch on the training rows' tail (the same 5% that
`data.holdout` validates on), and scores the eval split. Its share of the achievable lift,
(AUC - 0.5) / (best - 0.5), is what any model can be expected to reach at that size: a
generic model's share below it is the model's gap, the rest is the data's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from recsys.metrics import auc

HOLDOUT_FRACTION = 0.05  # conf/data/synth.yaml's data.holdout.fraction (tail)
L2_WEIGHTS = (0.3, 1.0, 3.0)  # per row: penalty = l2 x sum of squares / training rows
EPOCHS = 40
BATCH_ROWS = 4096


@dataclass(frozen=True)
class Rows:
    ids: torch.Tensor  # int64 [N, C]: per planted id column, 1 + its value's index (0: missing)
    dense: torch.Tensor  # float32 [N, 2 D]: standardized log1p(count) and a missing flag per count
    labels: torch.Tensor  # float32 [N]


class PlantedFamily(nn.Module):
    """logit = bias + per-id effects + sum over planted pairs of <f_a(id_a), g_b(id_b)> + dense."""

    def __init__(self, vocab: int, effect_columns, pairs, rank: int, num_dense: int):
        super().__init__()
        self.pairs = tuple(pairs)
        self.effect_columns = torch.tensor(effect_columns, dtype=torch.long)
        self.effects = nn.Parameter(torch.zeros(len(effect_columns), vocab))
        self.left = nn.Parameter(0.1 * torch.randn(len(self.pairs), vocab, rank))
        self.right = nn.Parameter(0.1 * torch.randn(len(self.pairs), vocab, rank))
        self.dense = nn.Linear(num_dense, 1)

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        present = (ids > 0).float()
        logit = self.dense(dense).squeeze(-1)
        effect_ids, effect_present = ids[:, self.effect_columns], present[:, self.effect_columns]
        logit = logit + (self.effects.gather(1, effect_ids.T).T * effect_present).sum(1)
        for p, (a, b) in enumerate(self.pairs):
            dot = (self.left[p][ids[:, a]] * self.right[p][ids[:, b]]).sum(1)
            logit = logit + dot * present[:, a] * present[:, b]
        return logit

    def penalty(self) -> torch.Tensor:
        return sum(p.pow(2).sum() for p in (self.effects, self.left, self.right))


def _read(folder: Path) -> pa.Table:
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no Parquet files (write them with `recsys-data synth`)")
    return pa.concat_tables(pq.read_table(f) for f in files)


def _rows(table: pa.Table, columns: int, num_dense: int, encode) -> Rows:
    ids = np.stack([encode(c, table.column(f"C{c + 1}")) for c in range(columns)], axis=1)
    counts, missing = [], []
    for i in range(num_dense):
        column = table.column(f"I{i + 1}")
        missing.append(column.is_null().to_numpy(zero_copy_only=False).astype(np.float32))
        counts.append(np.log1p(np.maximum(pc.fill_null(column, 0).to_numpy(), 0)))
    return Rows(
        torch.from_numpy(ids.astype(np.int64)),
        torch.from_numpy(np.stack(counts + missing, axis=1).astype(np.float32)),
        torch.from_numpy(table.column("label").to_numpy().astype(np.float32)),
    )


def load(train: Path, eval_: Path, world: str) -> tuple[Rows, Rows, float, dict]:
    """Train and eval rows of the planted columns, ids indexed over both splits."""
    from data_tools.planted import WORLDS, World
    from data_tools.synth import read_report

    spec = WORLDS[World(world)]
    effect_columns = [c for c, scale in enumerate(spec.effects) if scale]
    planted = sorted({*effect_columns, *(c for pair in spec.pairs for c in pair)})
    num_dense = len(spec.dense_weights)
    tables = _read(train), _read(eval_)
    vocab: dict[int, pa.Array] = {}
    for c in planted:
        name = f"C{c + 1}"
        both = pa.chunked_array(tables[0].column(name).chunks + tables[1].column(name).chunks)
        vocab[c] = pc.unique(both.cast(pa.string())).drop_null()

    def encode(c: int, column: pa.ChunkedArray) -> np.ndarray:
        if c not in vocab:  # a column the planted model ignores (cold_start's C1..C8): its
            return np.zeros(len(column), np.int64)  # 10^7-id vocabulary would size every table
        index = pc.index_in(column.cast(pa.string()), value_set=vocab[c])
        return pc.fill_null(pc.add(index, 1), 0).to_numpy()

    train_rows, eval_rows = (_rows(t, max(planted) + 1, num_dense, encode) for t in tables)
    shape = {
        "vocab": 1 + max(len(v) for v in vocab.values()),
        "effect_columns": effect_columns,
        "pairs": spec.pairs,
        "rank": spec.pair_rank,
        "num_dense": 2 * num_dense,
    }
    return train_rows, eval_rows, float(read_report(eval_)["auc_p_true"]), shape


def _take(rows: Rows, index) -> Rows:
    return Rows(rows.ids[index], rows.dense[index], rows.labels[index])


def _score(model: PlantedFamily, rows: Rows) -> float:
    with torch.no_grad():
        return auc(rows.labels, model(rows.ids, rows.dense))


def fit(train: Rows, eval_: Rows, shape: dict, l2: float, seed: int) -> tuple[float, float, int]:
    """(valid AUC, eval AUC, epoch) at the epoch with the best validation AUC."""
    torch.manual_seed(seed)
    n = len(train.labels)
    cut = n - int(n * HOLDOUT_FRACTION)
    fit_rows, valid = _take(train, slice(0, cut)), _take(train, slice(cut, n))
    model = PlantedFamily(**shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    best = (0.0, 0.0, -1)
    for epoch in range(EPOCHS):
        for index in torch.randperm(cut).split(BATCH_ROWS):
            batch = _take(fit_rows, index)
            loss = F.binary_cross_entropy_with_logits(model(batch.ids, batch.dense), batch.labels)
            loss = loss + l2 * model.penalty() / cut
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        valid_auc = _score(model, valid)
        if valid_auc > best[0]:
            best = (valid_auc, _score(model, eval_), epoch)
    return best


def ceiling(train: Path, eval_: Path, world: str, seed: int = 0) -> dict:
    train_rows, eval_rows, best_auc, shape = load(train, eval_, world)
    trials = {l2: fit(train_rows, eval_rows, shape, l2, seed) for l2 in L2_WEIGHTS}
    l2 = max(trials, key=lambda k: trials[k][0])  # chosen on validation, never on eval
    valid_auc, eval_auc, epoch = trials[l2]
    return {
        "world": world,
        "train_rows": len(train_rows.labels),
        "best_auc": best_auc,
        "l2": l2,
        "epoch": epoch,
        "valid_auc": valid_auc,
        "eval_auc": eval_auc,
        "share": (eval_auc - 0.5) / (best_auc - 0.5),
    }


def main(argv: list[str] | None = None) -> None:
    from data_tools.synth import read_report
    from recsys.bench.quality import SynthLog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="pairwise")
    parser.add_argument(
        "--distinct",
        type=int,
        default=100,
        help="ids per column; 0: the world's own (as the quality bench's cold_start log)",
    )
    parser.add_argument("--rows", type=float, default=2e5, help="training rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train",
        type=Path,
        help="a log `recsys-data synth` wrote (with --eval): its ceiling, instead of the "
        "bench's log of --world/--distinct/--rows; the world is read from its _report.json",
    )
    parser.add_argument("--eval", type=Path, help="the eval split of --train's world")
    args = parser.parse_args(argv)
    if (args.train is None) != (args.eval is None):
        parser.error("--train and --eval go together")
    if args.train is not None:
        train, eval_, world = args.train, args.eval, str(read_report(args.train)["world"])
    else:
        log = SynthLog(args.world, args.distinct or None, train_rows=int(args.rows))
        log.write()
        train, eval_, world = log.folder / "train", log.folder / "eval", args.world
    print(json.dumps(ceiling(train, eval_, world, args.seed)))


if __name__ == "__main__":
    main()
