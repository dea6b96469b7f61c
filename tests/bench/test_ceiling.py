"""The learnable ceiling: the planted family, fitted on a synthetic log's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.planted import World
from data_tools.synth import SynthOptions, write_synthetic
from recsys.bench import ceiling


def _log(root: Path, world: World, rows: int) -> tuple[Path, Path]:
    for split, n, seed in (("train", rows, 0), ("eval", 10_000, 1)):
        write_synthetic(
            SynthOptions(out=str(root / split), rows=n, seed=seed, world=world, distinct=(50,))
        )
    return root / "train", root / "eval"


@pytest.mark.parametrize("world", [World.pairwise, World.first_order])
def test_the_planted_family_gets_most_of_the_lift_and_more_with_more_rows(
    tmp_path: Path, world: World, monkeypatch
) -> None:
    monkeypatch.setattr(ceiling, "L2_WEIGHTS", (1.0,))
    monkeypatch.setattr(ceiling, "EPOCHS", 15)
    small = ceiling.ceiling(*_log(tmp_path / "small", world, 5_000), world.value)
    large = ceiling.ceiling(*_log(tmp_path / "large", world, 60_000), world.value)
    assert small["train_rows"] == 5_000 and large["train_rows"] == 60_000
    assert 0.5 < large["share"] <= 1.05, large  # the true family learns the planted model
    assert large["share"] > small["share"] + 0.02, (small, large)  # ...and is data-bound
    assert large["eval_auc"] < large["best_auc"] + 0.01


def test_in_the_cold_start_world_unseen_ids_cost_the_planted_family_little(
    tmp_path: Path, monkeypatch
) -> None:
    """Nearly every eval id of C1..C8 is new, yet their categories and the counts carry all of
    p_true: the world's best AUC is one a model can reach (the floor's premise)."""
    monkeypatch.setattr(ceiling, "L2_WEIGHTS", (1.0,))
    monkeypatch.setattr(ceiling, "EPOCHS", 10)
    for split, n, seed in (("train", 40_000, 0), ("eval", 10_000, 1)):
        options = SynthOptions(out=str(tmp_path / split), rows=n, seed=seed, world=World.cold_start)
        write_synthetic(options)
    result = ceiling.ceiling(tmp_path / "train", tmp_path / "eval", World.cold_start.value)
    assert result["share"] > 0.9, result


def test_the_cli_takes_a_users_own_log_and_reads_its_world(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(ceiling, "L2_WEIGHTS", (1.0,))
    monkeypatch.setattr(ceiling, "EPOCHS", 2)
    train, eval_ = _log(tmp_path, World.first_order, 3_000)
    ceiling.main(["--train", str(train), "--eval", str(eval_)])
    result = json.loads(capsys.readouterr().out)
    assert (result["world"], result["train_rows"]) == ("first_order", 3_000)
    with pytest.raises(SystemExit):
        ceiling.main(["--train", str(train)])
    assert "--train and --eval go together" in capsys.readouterr().err
