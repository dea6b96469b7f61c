"""Run by torchrun (test_holdout_ranks.py): the row ids every rank trains on and validates on.

    torchrun --nproc_per_node=2 tests/distributed/holdout_rows.py OUT.json EPOCHS OVERRIDE...

Builds the run's streams and sharded model as the recipe does, trains `EPOCHS` epochs through
the real loop (lockstep, loader workers, train pipeline) and validates once; rank 0 writes
{"trained": [[ids of epoch e, all ranks] ...], "validated": [ids]} to OUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from recsys.compose import load_config
from recsys.distributed.env import init_distributed, shutdown_distributed
from recsys.distributed.gather import gather_objects
from recsys.train.build import build_training, datasets
from recsys.train.evaluator import evaluate
from recsys.train.loop import Epoch, TrainJob, TrainState
from recsys.train.validate import validate


def main(out: Path, epochs: int, overrides: list[str]) -> None:
    cfg = load_config(overrides, output_dir=str(out.parent / "run"))
    schema = validate(cfg)
    env = init_distributed("cpu")
    rows = _rows(cfg, schema, env, epochs)  # what holds the sharded model ends with that frame
    if env.is_main:
        out.write_text(json.dumps(rows))
    # gloo's threads stop only with the group's last reference; left running at exit, they
    # abort the process (what the recipe's finish step guards against; issue 8's crash).
    if not shutdown_distributed():
        raise RuntimeError("the process group outlived the run: something still holds the model")


def _rows(cfg, schema, env, epochs: int) -> dict[str, list]:
    data = datasets(cfg, schema, env)
    training = build_training(cfg, schema, env)
    job = TrainJob(training.model, training.optimizer, schema, cfg.trainer, env)
    state, trained = TrainState(), []
    for epoch in range(epochs):
        state.epoch, mine = epoch, []
        with Epoch(job, data.train, state) as steps:
            for report in steps:
                if report.batch.position is not None:  # None: a padding batch (lockstep)
                    mine += report.batch.position.row_ids.tolist()
        trained.append(sorted(i for part in gather_objects(mine, env) for i in part))
    validated = evaluate(job.model, data.valid, schema, env).row_ids.tolist()
    return {"trained": trained, "validated": validated}


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
