"""torch.distributed.checkpoint (DCP) read without unpickling, and written in bounded chunks.

DCP writes its `.metadata` file with pickle and reads it back with a plain `pickle.load`, and
it loads any non-tensor entry with `torch.load(weights_only=False)`: a checkpoint folder from
somewhere else could run code on load. Here the metadata is read by an unpickler that builds
only DCP's own metadata classes and the few torch values they hold (sizes, dtypes, layouts),
and a checkpoint with a non-tensor entry is refused: recsys saves tensors only.

Writing goes through `ChunkedSavePlanner` and `BoundedFileSystemWriter` (below): the same
DCP format, with big tables written as row chunks, so a save costs a chunk of memory, not a
copy of every table.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import queue
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
)
from torch.distributed.checkpoint.planner import (
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from recsys.train.allocator import give_back_freed_memory

METADATA_FILE = ".metadata"
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # torch.strided and other layouts, by name
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),  # the checkpoint id DCP keeps in storage_meta
    ("pathlib", "WindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or _is_dtype(module, name) or _is_dcp_class(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused GLOBAL {module}.{name}")


def _is_dtype(module: str, name: str) -> bool:
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


def _is_dcp_class(module: str, name: str) -> bool:
    """A class DCP's metadata modules define themselves (not a name they merely import)."""
    if module not in _DCP_MODULES:
        return False
    obj = getattr(__import__(module, fromlist=[name]), name, None)
    return isinstance(obj, type) and obj.__module__ == module


def read_metadata(path: Path) -> Metadata:
    """A DCP folder's metadata; raises pickle.UnpicklingError naming the file if it holds
    anything else than DCP's metadata, or a non-tensor entry."""
    file = Path(path) / METADATA_FILE
    with open(file, "rb") as f:
        try:
            metadata = _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{file}: {e}") from e
    if not isinstance(metadata, Metadata):
        raise pickle.UnpicklingError(f"{file}: holds {type(metadata).__name__}, not DCP metadata")
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            raise pickle.UnpicklingError(
                f"{file}: entry {key!r} is a pickled object, not a tensor (recsys saves tensors only)"
            )
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with the metadata read by `read_metadata` above."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:  # per-rank metadata files: recsys never writes them
            raise pickle.UnpicklingError(f"{self.path}: per-rank DCP metadata is not supported")
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


# ------------------------------------------------------------------------ bounded writing

# The most bytes of one table DCP copies at a time. DCP's file writer clones every tensor that
# is a view into a larger storage (TorchRec's table shards are views into one fused buffer per
# kernel) and keeps every clone of a file alive until the file is closed: one file per rank
# held a copy of every table and optimizer state. Here tables are written in row chunks of at
# most this size, and a file closes once it holds that many bytes (a save then peaks about two
# chunks above training: the clone, and torch.save's buffer of it).
CHUNK_BYTES = 32 << 20


class ChunkedSavePlanner(DefaultSavePlanner):
    """DCP's default planner, with every tensor or shard larger than `chunk_bytes` written as
    row chunks (more chunks of the same tensor in the metadata: any reader reshards them)."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES):
        super().__init__()
        self.chunk_bytes = chunk_bytes
        self._sources: dict[MetadataIndex, tuple[MetadataIndex, int, int]] = {}

    def create_local_plan(self) -> SavePlan:
        plan = super().create_local_plan()
        items = [part for item in plan.items for part in self._split(item)]
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan

    def _split(self, item: WriteItem) -> list[WriteItem]:
        data = item.tensor_data
        if data is None or len(data.chunk.sizes) == 0 or item_bytes(item) <= self.chunk_bytes:
            return [item]
        rows = data.chunk.sizes[0]
        step = max(1, rows * self.chunk_bytes // item_bytes(item))
        parts = []
        for start in range(0, rows, step):
            n = min(step, rows - start)
            offsets = torch.Size([data.chunk.offsets[0] + start, *data.chunk.offsets[1:]])
            chunk = ChunkStorageMetadata(offsets, torch.Size([n, *data.chunk.sizes[1:]]))
            index = MetadataIndex(item.index.fqn, offsets)
            self._sources[index] = (item.index, start, n)
            parts.append(
                WriteItem(
                    index, WriteItemType.SHARD, tensor_data=dataclasses.replace(data, chunk=chunk)
                )
            )
        return parts

    def lookup_object(self, index: MetadataIndex) -> Any:
        if index not in self._sources:
            return super().lookup_object(index)
        whole, start, n = self._sources[index]
        return super().lookup_object(whole).narrow(0, start, n)


def item_bytes(item: WriteItem) -> int:
    """Bytes of one write item's chunk."""
    data = item.tensor_data
    return math.prod(data.chunk.sizes) * torch._utils._element_size(data.properties.dtype)


class BoundedFileSystemWriter(FileSystemWriter):
    """DCP's file writer, with a rank's items spread over files of at most `file_bytes` each
    (one item per file when larger), so that at most one file's worth of copies is alive."""

    def __init__(self, path: str | Path, file_bytes: int = CHUNK_BYTES):
        super().__init__(path, single_file_per_rank=True, thread_count=1)
        self.file_bytes = file_bytes

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        prefix = plan.storage_data.prefix
        files: queue.Queue = _FilesFreeingMemory()
        for number, bucket in enumerate(_buckets(plan.items, self.file_bytes)):
            name = f"{prefix}{number}{DEFAULT_SUFFIX}"
            files.put((self.fs.concat_path(self.path, name), name, bucket))
        return self._write_data(planner, files)


class _FilesFreeingMemory(queue.Queue):
    """The writer's queue of files to write: taking the next one first hands the memory the
    last one's chunks were copied into back to the OS (`give_back_freed_memory`)."""

    def get_nowait(self):
        give_back_freed_memory()
        return super().get_nowait()


def _buckets(items: list[WriteItem], limit: int) -> list[list[WriteItem]]:
    buckets: list[list[WriteItem]] = [[]]
    size = 0
    for item in items:
        n = item_bytes(item) if item.tensor_data is not None else 0
        if buckets[-1] and size + n > limit:
            buckets.append([])
            size = 0
        buckets[-1].append(item)
        size += n
    return buckets
