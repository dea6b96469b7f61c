"""Run by torchrun (test_scale_memory.py): each rank's peak RSS while training alone, then
during a checkpoint, the final evaluation and the export, as the recipe runs them.

    torchrun --nproc_per_node=2 tests/distributed/scale_rss.py OUT.json OVERRIDE...

Rank 0 writes {"ranks": [{"train": MiB, "checkpoint": MiB, ..., "held_mib": its table shards}]}:
every phase's peak (VmHWM, reset before the phase) and the resident memory it started from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from recsys.compose import load_config
from recsys.distributed.gather import gather_objects, local_shards
from recsys.train.checkpoint import save_checkpoint
from recsys.train.recipe import TrainRecipe
from recsys.train.validate import validate


def _status_mib(field: str) -> float:
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in lines if line.startswith(field))) / 1024


def _reset_peak() -> float:
    """Start a new peak (VmHWM) from the resident memory now; returns that memory."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS:")


def main(out: Path, overrides: list[str]) -> None:
    cfg = load_config(overrides, output_dir=str(out.parent / "run"))
    with TrainRecipe(cfg, validate(cfg)) as recipe:
        recipe.setup()
        recipe.train()
        row = {"train": _status_mib("VmHWM:"), "held_mib": _held_mib(recipe)}
        for phase, step in (
            ("checkpoint", lambda: _checkpoint(recipe)),
            ("evaluate", recipe.evaluate),
            ("export", recipe.export),
        ):
            row[f"{phase}_from"] = _reset_peak()
            step()
            row[phase] = _status_mib("VmHWM:")
        ranks = gather_objects(row, recipe.env)
        if recipe.env.is_main:
            out.write_text(json.dumps({"ranks": ranks}))


def _checkpoint(recipe: TrainRecipe) -> None:
    save_checkpoint(
        recipe.output_dir, recipe.job.model, recipe.training.optimizer, recipe.state.step, 0,
        None, recipe.schema, recipe.cfg, recipe.env, keep_last=1,
    )  # fmt: skip


def _held_mib(recipe: TrainRecipe) -> float:
    """MiB of embedding table rows this rank holds (its shards)."""
    state = recipe.job.model.state_dict()
    keys = recipe.training.layout.embedding_keys().values()
    blocks = [b for key in keys for b in local_shards(state[key], recipe.env).blocks]
    return sum(t.numel() * t.element_size() for _, _, t in blocks) / 2**20


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
