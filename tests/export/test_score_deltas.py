"""`recsys-score --delta DIR ...`: a base export and the delta exports `make train-days` wrote
after it score as the last day's full export; a broken chain exits 2 naming the delta."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.cli.score import main as score_main
from tests.days import Days

TOL = 1e-5


def _score(tmp_path: Path, export: Path, rows: Path, *deltas: Path) -> np.ndarray:
    out = tmp_path / f"scores_{len(deltas)}.parquet"
    flags = [a for d in deltas for a in ("--delta", str(d))]
    assert score_main([str(export), str(rows), str(out), *flags]) == 0
    return pq.read_table(out)["score"].to_numpy()


def test_deltas_in_order_score_as_the_full_export(trained_days: Days, tmp_path: Path) -> None:
    days = trained_days.result.days
    base, deltas = days[0].export_dir, [d.delta_dir for d in days[1:]]
    rows = trained_days.folders[-1]  # a day folder, read as training read it
    full = _score(tmp_path, days[-1].export_dir, rows)
    chained = _score(tmp_path, base, rows, *deltas)
    np.testing.assert_allclose(chained, full, rtol=0, atol=TOL)
    assert np.abs(_score(tmp_path, base, rows) - full).max() > 100 * TOL  # the deltas mattered


@pytest.mark.parametrize(
    ("order", "match"),
    [
        ([2], "applies to the export"),  # day 1's delta left out
        ([2, 1], "applies to the export"),  # out of order
        (["missing"], "delta.json not found"),
    ],
)
def test_a_broken_chain_exits_2_naming_the_delta(
    trained_days: Days, tmp_path: Path, capsys: pytest.CaptureFixture[str], order, match
) -> None:
    days = trained_days.result.days
    deltas = [tmp_path / k if isinstance(k, str) else days[k].delta_dir for k in order]
    out = tmp_path / "scores.parquet"
    argv = [str(days[0].export_dir), str(trained_days.folders[-1]), str(out)]
    code = score_main(argv + [a for d in deltas for a in ("--delta", str(d))])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("error: ") and str(deltas[0]) in err and match in err
    assert "Traceback" not in err
