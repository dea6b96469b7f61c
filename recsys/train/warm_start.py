"""Warm start: a new run's tables (and dense part, when shapes match) from an earlier model.

When the dense part as a whole differs (another head, e.g. the first-order stage's LR into
DLRM), its first-order term (`dense_linear`: a weight per dense feature and a bias) is still
copied when it matches: it means the same in every head.

The source is a serving export (`export/` folder with manifest.json), a checkpoint step folder,
or a run folder (its newest checkpoint, else its export). Tables are matched by name. A table
whose bucket count or dim changed cannot be copied: an error names it, or, with
`trainer.warm_start_skip_mismatched=true`, it keeps its fresh initialization (with a warning).
Optimizer state is not carried over unless asked (`trainer.warm_start_optimizer`, from a
checkpoint whose tables all fit): train-days carries it from day to day, so a row's adaptive
step size does not restart every day.

Managed tables (`hashing: managed`) carry their remap (which id holds which row, the eviction
counts, the step counter): only a checkpoint has all of it, so a managed table is refused from
an export. Ids that expired then lose their rows (`expire`, recsys.train.remap_state).

Sharded tables: every rank copies its own shards' slices (from the shard metadata offsets) out
of the full array, so this works for table-, row-, column-wise and replicated tables alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from recsys.distributed.env import DistEnv
from recsys.distributed.gather import held_shards
from recsys.export.manifest import MANIFEST_FILE, Manifest, load_dense
from recsys.export.quantize import load_rows
from recsys.model.click import ClickModel
from recsys.model.head import silence
from recsys.model.layout import DENSE_FIRST_ORDER_PREFIX, FIRST_ORDER_SUFFIX, WeightLayout
from recsys.schema import Schema
from recsys.train.checkpoint import MODEL_SECTION, OPTIMIZER_SECTION, _init_optimizer_state
from recsys.train.checkpoint_checks import read_dcp_metadata
from recsys.train.checkpoint_layout import (
    CHECKPOINTS_DIR,
    META_FILE,
    CheckpointError,
    read_meta,
    resolve_checkpoint,
)
from recsys.train.remap_state import expire_ids, remap_state_keys
from recsys.train.safe_dcp import SafeFileSystemReader

log = logging.getLogger(__name__)

_MODEL = MODEL_SECTION + "."  # DCP flattens the checkpoint's model section into this prefix


@dataclass
class WarmStartReport:
    source: Path
    tables: list[str] = field(default_factory=list)  # copied
    skipped: list[str] = field(default_factory=list)  # shape changed or absent in the source
    dense: bool = False  # the dense part was copied too
    dense_first_order: bool = False  # only the dense part's first-order term was copied
    source_first_order: bool = False  # the source's dense part is first-order terms only (LR)
    silenced: bool = False  # the new head's logit layer zeroed: it starts as the source model
    remaps: list[str] = field(default_factory=list)  # managed tables whose remap was copied
    optimizer: bool = False  # the optimizer state was copied too
    expired: dict[str, int] = field(default_factory=dict)  # managed table -> ids that lost rows


def warm_start(
    source: str | Path,
    model: nn.Module,
    layout: WeightLayout,
    schema: Schema,
    env: DistEnv,
    skip_mismatched: bool,
    optimizer: Any = None,
    expire: dict[str, np.ndarray] | None = None,
) -> WarmStartReport:
    """Copy matching tables (and the dense part, managed remaps) from `source` into `model`,
    whose state entries `layout` names. All ranks call it.

    Args:
        optimizer: also copy its state from a checkpoint source (None: it starts fresh).
        expire: managed table -> hashed ids (int64) that lose their rows (None: none).
    """
    kind, path = locate_source(Path(source))
    state = model.state_dict()
    if kind == "export":
        _refuse_managed_from_export(path, layout, skip_mismatched)
        report = _from_export(path, state, layout, skip_mismatched)
    else:
        report = _from_checkpoint(path, state, layout, schema, skip_mismatched)
    for table, ids in (expire or {}).items():
        if table in report.remaps:
            report.expired[table] = expire_ids(state, layout, table, ids)
    model.load_state_dict(state)
    if report.source_first_order and not report.dense:
        report.silenced = silence(
            next(m for m in model.modules() if isinstance(m, ClickModel)).head
        )
    if optimizer is not None and kind == "checkpoint":
        report.optimizer = _copy_optimizer(path, optimizer, report)
    if env.is_main:
        log.info(
            "warm start from %s: tables %s%s, dense part %s%s, optimizer %s%s",
            path,
            report.tables,
            f" (kept fresh: {report.skipped})" if report.skipped else "",
            _dense_words(report),
            " and its logit layer zeroed (it starts as the source's first-order model)"
            if report.silenced
            else "",
            "copied" if report.optimizer else "fresh",
            f", expired ids {report.expired}" if report.expired else "",
        )
    return report


def _dense_words(report: WarmStartReport) -> str:
    if report.dense:
        return "copied"
    return "fresh (its first-order term copied)" if report.dense_first_order else "fresh"


def locate_source(path: Path) -> tuple[str, Path]:
    """('export', folder) or ('checkpoint', step folder) for a warm-start path."""
    if (path / MANIFEST_FILE).is_file():
        return "export", path
    if (path / META_FILE).is_file() or (path / CHECKPOINTS_DIR).is_dir():
        try:
            return "checkpoint", resolve_checkpoint(str(path), path)
        except CheckpointError:
            pass
    if (path / "export" / MANIFEST_FILE).is_file():
        return "export", path / "export"
    raise CheckpointError(
        f"trainer.warm_start={path}: neither an export folder (with {MANIFEST_FILE}), a "
        f"checkpoint folder (with {META_FILE}), nor a run folder holding either."
    )


def _shape_problem(name: str, want: tuple[int, ...], have: tuple[int, ...] | None) -> str | None:
    if have is None:
        return f"table '{name}' is not in the warm-start source"
    if tuple(want) != tuple(have):
        return (
            f"table '{name}' is [num_buckets, dim] = {list(want)} now but {list(have)} in the "
            f"warm-start source"
        )
    return None


def _accept(problem: str | None, name: str, report: WarmStartReport, skip: bool) -> bool:
    """True to copy; a problem raises, or with `skip` is logged and the table kept fresh."""
    if problem is None:
        return True
    absent = "is not in" in problem
    if not (skip or absent):
        raise CheckpointError(
            f"{problem}. Keep data.tables.{name.removesuffix(FIRST_ORDER_SUFFIX)} as it was, or "
            f"set trainer.warm_start_skip_mismatched=true to start that table fresh."
        )
    log.warning("warm start: %s; it starts fresh.", problem)
    report.skipped.append(name)
    return False


# ------------------------------------------------------------------------------ from an export


def _from_export(
    path: Path, state: dict[str, Any], layout: WeightLayout, skip: bool
) -> WarmStartReport:
    manifest = Manifest.load(path)
    manifest.verify(path)
    report = WarmStartReport(path)
    entries: dict[str, list[str]] = {}  # state key -> its tables (a folded bias shares one)
    for name, key in layout.embedding_keys().items():
        entries.setdefault(key, []).append(name)
    for key, names in entries.items():
        parts = [_export_part(path, manifest, layout, name, state[key].shape) for name in names]
        accepted = [
            _accept(problem, name, report, skip)
            for name, (_, problem) in zip(names, parts, strict=True)
        ]
        if all(accepted):
            full = np.concatenate([part for part, _ in parts], axis=1)
            copy_full_into(state[key], torch.from_numpy(full))
            report.tables.extend(names)
    dense = load_dense(path / manifest.dense["file"])
    report.source_first_order = _first_order_only(list(dense))
    report.dense = _copy_dense(state, layout, dense, warn=not report.source_first_order)
    if not report.dense:
        report.dense_first_order = _copy_dense(state, layout, dense, first_order_only=True)
    return report


def _export_part(
    path: Path, manifest: Manifest, layout: WeightLayout, name: str, shape: tuple[int, ...]
) -> tuple[np.ndarray | None, str | None]:
    """A table's (or bias's) rows from the export, for its columns of a state entry of
    `shape`, and what is wrong with them (None: nothing)."""
    base = name.removesuffix(FIRST_ORDER_SUFFIX)
    columns = range(shape[1])[layout.columns(base, bias=name != base)]
    want = (shape[0], len(columns))
    full = _export_table(path, manifest, name, want, in_row=base in layout.folded)
    return full, _shape_problem(name, want, None if full is None else full.shape)


def _export_table(
    path: Path, manifest: Manifest, name: str, want: tuple[int, ...], in_row: bool = False
) -> np.ndarray | None:
    base = name.removesuffix(FIRST_ORDER_SUFFIX)
    entry = manifest.tables.get(base)
    if entry is None:
        return None
    if name == base:  # float32 from any export.table_dtype (int8 rows decoded)
        return load_rows(path, entry, mmap=False).full()
    if not entry.get("first_order"):
        return None
    # The export keeps the bias as one column. A bias table's bias is its columns' sum: the
    # bias in the first, zeros in the rest; one folded into its row is their mean: the bias
    # in every column. Either way the model's bias is the same.
    bias = load_rows(path, entry["first_order"], mmap=False).full()
    full = np.zeros((bias.shape[0], want[1]), dtype=np.float32)
    full[:, : want[1] if in_row else 1] = bias[:, :1]
    return full


# --------------------------------------------------------------------------- from a checkpoint


def _from_checkpoint(
    path: Path, state: dict[str, Any], layout: WeightLayout, schema: Schema, skip: bool
) -> WarmStartReport:
    saved_sizes = {
        k: tuple(md.size)
        for k, md in read_dcp_metadata(path).state_dict_metadata.items()
        if hasattr(md, "size")
    }
    _warn_on_rehashed_tables(read_meta(path)["schema"], schema)
    report = WarmStartReport(path)
    wanted: dict[str, Any] = {}
    for name, key in layout.embedding_keys().items():
        problem = _shape_problem(name, tuple(state[key].shape), saved_sizes.get(_MODEL + key))
        if _accept(problem, name, report, skip):
            wanted[_MODEL + key] = state[key]
            report.tables.append(name)
    for table in layout.remaps:
        keys = remap_state_keys(state, layout, table)
        if table in report.tables and all(
            saved_sizes.get(_MODEL + k) == tuple(state[k].shape) for k in keys
        ):
            wanted.update({_MODEL + k: state[k] for k in keys})
            report.remaps.append(table)
    dense_keys = layout.dense_keys(state)  # state key -> its key inside the dense part
    dense = list(dense_keys)
    saved_prefix = _MODEL + layout.dense_prefix
    saved_dense = [k.removeprefix(saved_prefix) for k in saved_sizes if k.startswith(saved_prefix)]
    report.source_first_order = _first_order_only(saved_dense)
    dense_ok = set(saved_dense) == set(dense_keys.values()) and all(
        saved_sizes.get(_MODEL + k) == tuple(state[k].shape) for k in dense
    )
    linear = [k for k, inner in dense_keys.items() if _first_order(inner)]
    linear_ok = bool(linear) and all(
        saved_sizes.get(_MODEL + k) == tuple(state[k].shape) for k in linear
    )
    if dense_ok or linear_ok:
        wanted.update({_MODEL + k: state[k] for k in (dense if dense_ok else linear)})
    # From an LR into another head (the first-order stage) the fresh head is the intent: the
    # closing info line says so; anything else deserves the warning.
    if not dense_ok and not (report.source_first_order and linear_ok):
        log.warning(
            "warm start: the dense part differs from %s; it starts fresh%s.",
            path,
            " (its first-order term copied)" if linear_ok else "",
        )
    # Loads each rank's own shards straight from the files (DCP reads only overlapping parts).
    dcp.load(
        wanted,
        storage_reader=SafeFileSystemReader(path),
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    for key, value in wanted.items():
        state[key[len(_MODEL) :]] = value
    report.dense = dense_ok and bool(dense)
    report.dense_first_order = not dense_ok and linear_ok
    return report


def _warn_on_rehashed_tables(saved: dict[str, Any], schema: Schema) -> None:
    """Same shape, other hashing: rows would land on other ids' buckets. Worth a warning."""
    seeds = {f["name"]: (f["column"], f["seed"], f["table"]) for f in saved["features"]}
    for f in schema.sparse_features:
        if f.name in seeds and seeds[f.name] != (f.column, f.seed, f.table):
            log.warning(
                "warm start: feature '%s' hashes differently now (column, seed, table %s -> %s); "
                "its table's rows will not mean the same ids.",
                f.name,
                seeds[f.name],
                (f.column, f.seed, f.table),
            )


# -------------------------------------------------------------------------------- copying


def _first_order(dense_key: str) -> bool:
    """Whether a key inside the dense part is its first-order term (`dense_linear.*`)."""
    return dense_key.startswith(DENSE_FIRST_ORDER_PREFIX)


def _first_order_only(dense_keys: list[str]) -> bool:
    """Whether a dense part (its keys) is first-order terms only: an LR's."""
    return bool(dense_keys) and all(_first_order(k) for k in dense_keys)


def _copy_dense(
    state: dict[str, Any],
    layout: WeightLayout,
    source: dict[str, torch.Tensor],
    first_order_only: bool = False,
    warn: bool = True,
) -> bool:
    """Copy the dense part (or only its first-order term) when every parameter is there with
    the same shape, else keep it (with a warning, when `warn`)."""
    targets = layout.dense_keys(state)
    if first_order_only:
        targets = {k: s for k, s in targets.items() if _first_order(s)}
        source = {s: v for s, v in source.items() if _first_order(s)}
    mismatched = [
        k for k, s in targets.items() if s not in source or source[s].shape != state[k].shape
    ]
    if not targets or mismatched or set(source) != set(targets.values()):
        if warn and not first_order_only:
            log.warning(
                "warm start: the dense part differs from the source (e.g. %s); it starts fresh.",
                mismatched[:3] or sorted(set(source) ^ set(targets.values()))[:3],
            )
        return False
    for key, source_key in targets.items():
        state[key].detach().copy_(source[source_key])
    return True


def copy_full_into(target: Any, full: torch.Tensor) -> None:
    """Copy this rank's blocks of the full table `full` into the table state entry `target`
    (its shards, DTensor part or replicated copy: `held_shards`)."""
    for row, column, block in held_shards(target).blocks:
        rows, columns = block.shape
        block.detach().copy_(full[row : row + rows, column : column + columns])


# ------------------------------------------------------------------------ managed tables, optimizer


def _refuse_managed_from_export(path: Path, layout: WeightLayout, skip: bool) -> None:
    """An export's remap lacks the eviction counts and step: its rows without the remap would
    be read by other ids, so a managed table warm-starts only from a checkpoint."""
    if layout.remaps and not skip:
        raise CheckpointError(
            f"trainer.warm_start={path} is an export, and managed tables {sorted(layout.remaps)} "
            f"need their remap state (ids, counts, step), which only a checkpoint holds: point "
            f"trainer.warm_start at the run folder or its checkpoints/step_N, or set "
            f"trainer.warm_start_skip_mismatched=true to start those tables fresh."
        )


def _copy_optimizer(path: Path, optimizer: Any, report: WarmStartReport) -> bool:
    """The optimizer state from a checkpoint, when every table and the dense part were copied
    (a fresh table's or dense part's state would not fit); else it starts fresh."""
    if report.skipped or not report.dense:
        log.warning("warm start: tables or the dense part start fresh, so the optimizer does too")
        return False
    _init_optimizer_state(optimizer)
    optim_state = optimizer.state_dict()
    dcp.load(
        {OPTIMIZER_SECTION: optim_state},
        storage_reader=SafeFileSystemReader(path),
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    optimizer.load_state_dict(optim_state)
    return True
