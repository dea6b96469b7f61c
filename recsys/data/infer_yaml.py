"""The config `recsys-data infer-schema` inferred, written as YAML a person can check.

Kept apart from the guessing (`recsys.data.infer`) because it only formats: each feature is
one flow-style line with the reason of its guess and what the rows showed as a comment, the
skipped columns are listed as comments, and every scalar is written so that it reads back as
the same value (plain where YAML would not retype it, JSON-quoted otherwise).
"""

from __future__ import annotations

import json
import re

from recsys.config import FeatureKind, FeatureSpec, LabelSpec
from recsys.data.infer import InferredConfig
from recsys.data.stats import FeatureStats


def to_yaml(inferred: InferredConfig, command: str) -> str:
    """The config as YAML, each feature with the reason of its guess as a comment."""
    data = inferred.data
    stats = {f.name: f for f in inferred.stats.features}
    reasons = {g.column: g.reason for g in inferred.guesses}
    lines = [
        f"# Starter data config written by `{command}`",
        f"# from the first {inferred.rows:,} rows. Check every guess (the comment after each",
        f"# feature says why), then train: recsys-train --config-dir DIR data={data.name}",
        f"# (this file being DIR/data/{data.name}.yaml).",
        f"name: {_scalar(data.name)}",
        f"train_path: {_scalar(data.train_path)}",
        f"eval_path: {_scalar(data.eval_path)}"
        + ("  # set it, or pass data.eval_path=PATH when training" if not data.eval_path else ""),
        f"format: {data.format.value}",
        f"label: {_flow(_label_entry(data.label))}",
        "features:",
    ]
    for name, spec in data.features.items():
        reason = f"{reasons[spec.column or name]}; {_seen(stats[name])}"
        lines.append(f"  {name}: {_flow(_feature_entry(spec))}  # {reason}")
    lines += [f"  # {g.column}: {g.reason}" for g in inferred.guesses if g.kind is None]
    lines.append("tables:")
    for name, table in data.tables.items():
        lines.append(f"  {name}: {{num_buckets: {table.num_buckets}}}")
    return "\n".join(lines) + "\n"


def _seen(f: FeatureStats) -> str:
    missing = f"{f.missing_rate:.0%} missing"
    return missing if f.distinct is None else f"{f.distinct:,.0f} distinct, {missing}"


def _label_entry(label: LabelSpec) -> dict:
    entry: dict = {"column": label.column}
    if label.threshold is not None:
        entry["threshold"] = label.threshold
    return entry


def _feature_entry(spec: FeatureSpec) -> dict:
    entry: dict = {"kind": spec.kind.value}
    if spec.column is not None:
        entry["column"] = spec.column
    if spec.kind is FeatureKind.dense:
        entry |= {"transform": spec.transform.value, "mean": spec.mean, "std": spec.std}
    else:
        entry["seed"] = spec.seed
    if spec.delimiter is not None:
        entry["delimiter"] = spec.delimiter
    return entry


def _flow(entry: dict) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in entry.items()) + "}"


def _scalar(value) -> str:
    """A YAML scalar: plain where that reads back as the same string, else JSON-quoted."""
    if value is None:
        return "null"
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_/.][A-Za-z0-9_./\-]*", value)
        reserved = value.lower() in ("true", "false", "null", "yes", "no", "on", "off", "~")
        return value if plain and not reserved else json.dumps(value)
    if isinstance(value, float):
        text = repr(float(f"{value:.12g}"))
        mantissa = text.split("e")[0]
        return text.replace("e", ".0e") if "e" in text and "." not in mantissa else text
    return str(value)
