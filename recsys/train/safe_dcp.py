"""Reading torch.distributed.checkpoint (DCP) folders without unpickling arbitrary objects.

DCP writes its `.metadata` file with pickle and reads it back with a plain `pickle.load`, and
it loads any non-tensor entry with `torch.load(weights_only=False)`: a checkpoint folder from
somewhere else could run code on load. Here the metadata is read by an unpickler that builds
only DCP's own metadata classes and the few torch values they hold (sizes, dtypes, layouts),
and a checkpoint with a non-tensor entry is refused: recsys saves tensors only.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta

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
