"""Checkpoints written in bounded chunks: big tables go to DCP as row chunks in files of bounded
size, load back exactly, and a save costs a chunk of memory, not a copy of the tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from recsys.train.safe_dcp import (
    BoundedFileSystemWriter,
    ChunkedSavePlanner,
    SafeFileSystemReader,
    read_metadata,
)

# One process without a process group: DCP says it assumes so.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _fused(rows: int, dim: int) -> dict[str, torch.Tensor]:
    """Two tables that are views into one buffer, as TorchRec's fused tables are."""
    buffer = torch.randn(2 * rows * dim)
    return {
        "a": buffer[: rows * dim].view(rows, dim),
        "b": buffer[rows * dim :].view(rows, dim),
        "momentum": torch.rand(rows),
        "step": torch.tensor(3.0),
    }


def _save(state: dict, path: Path, chunk_bytes: int) -> None:
    dcp.save(
        state,
        storage_writer=BoundedFileSystemWriter(path, file_bytes=chunk_bytes),
        planner=ChunkedSavePlanner(chunk_bytes),
    )


def test_big_tensors_are_saved_as_row_chunks_and_load_back(tmp_path: Path) -> None:
    state = _fused(1000, 8)
    _save(state, tmp_path / "ckpt", chunk_bytes=8 * 4 * 300)  # 300 rows a chunk
    metadata = read_metadata(tmp_path / "ckpt")
    chunks = metadata.state_dict_metadata["a"].chunks
    assert [c.offsets[0] for c in chunks] == [0, 300, 600, 900]
    assert len(list((tmp_path / "ckpt").glob("*.distcp"))) >= 8  # a file per chunk, at most
    loaded = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(loaded, storage_reader=SafeFileSystemReader(tmp_path / "ckpt"))
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def _hwm_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if "VmHWM" in line)) / 1024


def test_a_save_costs_a_chunk_not_a_copy_of_the_tables(tmp_path: Path) -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM)
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    state = _fused(2_000_000, 16)  # 2 x 128 MiB, views into one 256 MiB buffer
    Path("/proc/self/clear_refs").write_text("5")
    before = _hwm_mib()
    _save(state, tmp_path / "ckpt", chunk_bytes=16 << 20)
    # DCP alone clones each view and keeps every clone of a file: +256 MiB here.
    assert _hwm_mib() - before < 96, _hwm_mib() - before
