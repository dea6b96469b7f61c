"""The quality study trains each (data set, candidate, seed) for real and tabulates it."""

from __future__ import annotations

import math
import shlex

import pytest

from recsys.bench import quality
from recsys.bench.quality import Cell, Dataset, RunCache, lift, study, table
from tests.synthetic import write_tiny_log


@pytest.mark.slow  # two real training processes (~30 s)
def test_study_trains_each_candidate_and_seed_and_reports_validation(tmp_path) -> None:
    log = write_tiny_log(tmp_path)
    tiny = Dataset("tiny", [*log.overrides, "trainer.epochs=1"])
    cells = study([tiny], {"lr": [["model=lr"]], "defaults": [[]]}, seeds=[0], tuned={})
    assert [(c.dataset, c.candidate, len(c.runs)) for c in cells] == [
        ("tiny", "lr", 1),
        ("tiny", "defaults", 1),
    ]
    for cell in cells:
        valid, _ = cell.stat("valid/auc")
        evaluation, _ = cell.stat("eval/auc")
        assert 0.5 < valid <= 1 and 0.5 < evaluation <= 1, cell.runs
    rows = table(cells, {"tiny": tiny}).splitlines()
    assert rows[2].startswith("| tiny | lr | ") and rows[3].startswith("| tiny | defaults | ")


def test_cell_statistics_and_lift_share() -> None:
    cell = Cell("d", "c", [{"eval/auc": 0.70}, {"eval/auc": 0.72}])
    mean, sd = cell.stat("eval/auc")
    assert mean == pytest.approx(0.71) and sd == pytest.approx(0.0141421, rel=1e-4)
    assert all(math.isnan(x) for x in cell.stat("valid/auc"))
    assert lift(0.7, best=0.8) == pytest.approx(2 / 3) and lift(0.7, best=None) is None


def test_a_candidate_keeps_the_setting_better_on_validation_never_eval() -> None:
    data = Dataset("d", ["data=movielens"])
    cache = RunCache(None)
    measured = {  # setting -> seed -> (valid, eval): "fast" wins on eval, "slow" on valid
        "trainer.lr=0.1": {0: (0.70, 0.80), 1: (0.71, 0.81)},
        "trainer.lr=0.001": {0: (0.75, 0.60), 1: (0.74, 0.61)},
    }
    for setting, by_seed in measured.items():
        for seed, (valid, evaluation) in by_seed.items():
            key = shlex.join(["data=movielens", setting, f"trainer.seed={seed}"])
            cache.runs[key] = {"valid/auc": valid, "eval/auc": evaluation}
    settings = [["trainer.lr=0.1"], ["trainer.lr=0.001"]]
    (cell,) = study([data], {"m": settings}, seeds=[0, 1], tuned={}, cache=cache)
    assert cell.overrides == ["trainer.lr=0.001"]
    assert [r["eval/auc"] for r in cell.runs] == [0.60, 0.61]


def test_the_2m_row_pairwise_and_the_mixed_worlds_run_only_when_named() -> None:
    assert "synth-pairwise-2M" not in quality.DEFAULT_DATASETS
    assert quality.DATASETS["synth-pairwise-2M"].synth.train_rows == 2_000_000
    mixed = quality.DATASETS["synth-mixed"]
    assert "synth-mixed" not in quality.DEFAULT_DATASETS
    assert (mixed.synth.world, mixed.synth.distinct, mixed.synth.train_rows) == (
        "mixed",
        None,
        500_000,
    )
    with pytest.raises(SystemExit, match="synth-pairwise-2M"):
        quality.main(["--datasets", "no-such-data"])
