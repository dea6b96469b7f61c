"""The quality study trains each (data set, candidate, seed) for real and tabulates it."""

from __future__ import annotations

import math

import pytest

from recsys.bench.quality import Cell, Dataset, lift, study, table
from tests.synthetic import write_tiny_log


@pytest.mark.slow  # two real training processes (~30 s)
def test_study_trains_each_candidate_and_seed_and_reports_validation(tmp_path) -> None:
    log = write_tiny_log(tmp_path)
    tiny = Dataset("tiny", [*log.overrides, "trainer.epochs=1"])
    cells = study([tiny], {"lr": ["model=lr"], "defaults": []}, seeds=[0], tuned={})
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
