"""`recsys-data days split|synth`: the day folders of `make train-days`, written by
data_tools.days exactly as `python -m data_tools.days` writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools.days import main as days_main
from recsys.cli.data import main
from tests.synthetic import make_click_log

DAY = 86_400


def _folders(out: Path) -> dict[str, pa.Table]:
    return {
        f.name: pq.read_table(f / "part-0.parquet") for f in sorted(out.iterdir()) if f.is_dir()
    }


@pytest.fixture
def logs(tmp_path: Path) -> list[Path]:
    """Two files, 300 rows each, 1000 s apart from 1970-01-01 00:00 UTC (a Thursday) on: the
    second file's rows interleave with the first's, so the split must sort them."""
    paths = []
    for k in range(2):
        rows = make_click_log(300, seed=k)
        seconds = pa.array(np.arange(300, dtype=np.int64) * 1000 + 500 * k)
        paths.append(tmp_path / f"log_{k}.parquet")
        pq.write_table(
            rows.set_column(rows.column_names.index("timestamp"), "timestamp", seconds), paths[-1]
        )
    return paths


def test_split_by_day_and_week(logs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "days"
    assert main(["days", "split", *map(str, logs), "--out", str(out)]) == 0
    folders = _folders(out)
    assert list(folders) == [f"day=1970-01-0{d}" for d in (1, 2, 3, 4)]  # 600 rows in 3.5 days
    for d, table in enumerate(folders.values()):
        seconds = table["timestamp"].to_numpy()
        assert (np.diff(seconds) > 0).all() and (seconds // DAY == d).all()
    assert sum(t.num_rows for t in folders.values()) == 600
    assert "4 folders under" in capsys.readouterr().out
    assert (
        main(["days", "split", *map(str, logs), "--out", str(tmp_path / "w"), "--period", "week"])
        == 0
    )
    assert list(_folders(tmp_path / "w")) == ["week=1969-12-29"]  # the Monday before


def test_the_same_folders_as_python_m_data_tools_days(logs: list[Path], tmp_path: Path) -> None:
    for command in (["split", *map(str, logs)], ["synth", "--days", "2", "--rows", "300"]):
        ours, theirs = tmp_path / command[0] / "ours", tmp_path / command[0] / "theirs"
        assert main(["days", *command, "--out", str(ours)]) == 0
        assert days_main([*command, "--out", str(theirs)]) == 0
        assert _folders(ours).keys() == _folders(theirs).keys()
        for name, table in _folders(ours).items():
            assert table.equals(_folders(theirs)[name]), name
    synth = tmp_path / "synth" / "ours"
    assert list(_folders(synth)) == ["day=000", "day=001"]
    assert len(json.loads((synth / "days.json").read_text())) == 2


def test_help_lists_the_actions_and_their_options(capsys) -> None:
    with pytest.raises(SystemExit, match="0"):
        main(["days", "synth", "--help"])
    usage = capsys.readouterr().out
    assert all(option in usage for option in ("--out", "--days", "--rows", "--seed"))
    with pytest.raises(SystemExit, match="2"):
        main(["days"])
    assert "split" in capsys.readouterr().err
