"""Typed configuration: the dataclasses every layer below the CLI takes.

Hydra composes YAML from `conf/` on top of these dataclasses (registered in the ConfigStore by
`register_configs`), so a misspelt key fails at composition instead of being silently ignored.
Nothing below `recsys/cli/` sees a DictConfig.

The feature schema (`DataConfig.features` + `DataConfig.tables`) is the single source of truth:
the loader, the model, the export manifest and the serving scorer are all built from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the config key and what to do."""


class FeatureKind(StrEnum):
    """What a column holds, and so how it reaches the model.

    Members are lower case because Hydra matches YAML values against member names.
    """

    dense = "dense"  # one float per row, fed to the dense arch
    id = "id"  # one categorical id per row (may be missing), hashed into a table
    id_list = "id_list"  # zero or more ids per row, hashed and pooled as a bag


class DenseTransform(StrEnum):
    none = "none"
    log1p = "log1p"  # log(1 + max(x, 0)): tames counts with heavy tails


class Pooling(StrEnum):
    sum = "sum"
    mean = "mean"


class TableHashing(StrEnum):
    """How ids reach a table's rows (README, "Hashing options"; `recsys.lookups`)."""

    plain = "plain"  # one hash into num_buckets rows
    double = "double"  # a second hash (second seed) as well, into this or a second table; summed
    qr = "qr"  # quotient-remainder: two small tables, combined by `combine` (Shi et al. 2019)


class Combine(StrEnum):
    """How the embeddings of one id's several lookups make one vector."""

    sum = "sum"
    product = "product"  # elementwise; hashing=qr on single-id features only


class LookupPart(StrEnum):
    """Which row of a physical table a lookup reads, from b = 1 + hash mod (hash_buckets - 1)."""

    bucket = "bucket"  # b itself
    quotient = "quotient"  # 1 + (b - 1) // divisor
    remainder = "remainder"  # 1 + (b - 1) % divisor


class Tower(StrEnum):
    """The side of a two-tower model (model=mf) a feature describes."""

    user = "user"
    item = "item"


class DataFormat(StrEnum):
    """How the files under data.train_path / data.eval_path are laid out."""

    parquet = "parquet"  # a file, folder (hive key=value partitions too), glob or URI
    csv = "csv"  # comma separated; header line unless data.header=false
    tsv = "tsv"  # tab separated; header line unless data.header=false
    criteo = "criteo"  # Criteo display ads: tab separated, no header, label I1..I13 C1..C26


class OnBadRow(StrEnum):
    """What a row that cannot be used does: stop the run, or get dropped and counted."""

    fail = "fail"
    skip = "skip"


@dataclass
class LabelSpec:
    """How the click label is read. `threshold` set: label = value >= threshold."""

    column: str = "label"
    threshold: float | None = None


@dataclass
class TableSpec:
    """One embedding table. Its memory is num_buckets x embedding_dim, whatever the id count."""

    num_buckets: int = MISSING
    embedding_dim: int | None = None  # None: model.embedding_dim
    pooling: Pooling = Pooling.sum
    hashing: TableHashing = TableHashing.plain  # plain | double | qr
    combine: Combine = Combine.sum  # qr: quotient and remainder embeddings, sum or product
    second_num_buckets: int | None = None  # double: rows of a second table; None: same table
    qr_remainder: int | None = None  # qr: remainder table rows R; None: ceil(sqrt(num_buckets))


@dataclass
class FeatureSpec:
    """One input feature. `column` and `table` default to the feature's own name."""

    kind: FeatureKind = FeatureKind.id
    column: str | None = None
    table: str | None = None
    seed: int = 0  # mmh3 seed; distinct per feature so shared tables do not collide alike
    transform: DenseTransform = DenseTransform.none  # dense features only
    clip_min: float | None = None  # dense: raw values clipped to [clip_min, clip_max] before
    clip_max: float | None = None  # the transform (tames outliers; None: no bound)
    mean: float = 0.0  # dense: after the transform, (x - mean) / std; statistics of the
    std: float = 1.0  # training data, so the dense arch sees inputs of unit scale
    delimiter: str | None = None  # id_list stored as one delimited string
    dropout: float = 0.0  # train-time chance to blank this feature in a row (see DLRMHead)
    tower: Tower | None = None  # user | item: its side in model=mf; other models ignore it


@dataclass
class DataConfig:
    name: str = MISSING
    train_path: str = MISSING  # file, folder, glob or pyarrow filesystem URI
    eval_path: str | None = None
    # Mid-run evaluations and early stopping use it when set; the final one uses eval_path.
    valid_path: str | None = None
    format: DataFormat = DataFormat.parquet
    header: bool = True  # csv/tsv: the first line of every file names the columns
    columns: list[str] | None = None  # csv/tsv without header: the column names, in order
    on_bad_row: OnBadRow = OnBadRow.fail  # skip: drop unusable rows, count them by reason
    label: LabelSpec = field(default_factory=LabelSpec)
    features: dict[str, FeatureSpec] = field(default_factory=dict)
    tables: dict[str, TableSpec] = field(default_factory=dict)
    prepare_hint: str | None = None  # command that creates the files, shown when they are missing


@dataclass
class ModelConfig:
    name: str = "dlrm"
    embedding_dim: int = 16
    dense_arch: list[int] = field(default_factory=lambda: [32])  # hidden sizes; -> embedding_dim
    over_arch: list[int] = field(default_factory=lambda: [64, 32])  # hidden sizes; -> 1 logit
    first_order: bool = True  # a learned bias per id (wide part), as in wide-and-deep / FM
    deep_embeddings: bool = False  # over arch also reads the embeddings (DeepFM-style)
    dropout: float = 0.2
    # model=dcn: cross layers x_{l+1} = x0 * (W x_l + b) + x_l on concat(dense, embeddings)
    cross_layers: int = 2
    low_rank: int | None = None  # W = U V^T with this rank; None: full rank
    structure: str = "stacked"  # stacked: cross -> over arch | parallel: cross || over arch


@dataclass
class CheckpointConfig:
    """When to write `<output_dir>/checkpoints/step_<N>/` (see recsys/train/checkpoint.py)."""

    every_n_steps: int | None = None  # None: no mid-epoch checkpoints
    at_epoch_end: bool = True
    keep_last: int = 2  # older complete checkpoints are deleted after each new one
    search_dir: str = "outputs"  # where trainer.resume=latest looks, across runs


@dataclass
class LRScheduleConfig:
    """Learning-rate factor over steps: linear warmup, then decay down to min_lr_ratio.

    Applied to the dense optimizer and to the fused sparse ones (TorchRec hands the lr of
    their param groups to FBGEMM at every step).
    """

    warmup_steps: int = 0
    decay: str = "none"  # none | linear | cosine | step
    decay_steps: int | None = None  # None: the run's estimated total steps minus warmup
    min_lr_ratio: float = 0.0  # floor of the factor (linear, cosine, step)
    step_every: int = 1000  # decay=step: multiply by step_gamma every this many steps
    step_gamma: float = 0.1


@dataclass
class EarlyStoppingConfig:
    """Stop when the validation metric has not improved for `patience` evaluations."""

    enabled: bool = False
    metric: str = "auc"  # auc (higher is better) | log_loss | ne (lower is better)
    patience: int = 3  # evaluations without improvement before stopping
    min_delta: float = 0.0  # an improvement smaller than this does not count


@dataclass
class TrainerConfig:
    device: str = "cpu"  # cpu (gloo) | cuda (nccl)
    epochs: int = 3
    max_steps: int | None = None  # stop after this many steps, whatever the epoch count
    batch_size: int = 512
    eval_batch_size: int = 4096
    optimizer: str = "adamw"  # dense optimizer: adamw | adam | sgd | adagrad
    lr: float = 1e-3  # dense optimizer
    weight_decay: float = 0.0  # dense optimizer
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    momentum: float = 0.0  # sgd
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    sparse_optimizer: str = "rowwise_adagrad"  # rowwise_adagrad | adagrad | adam | sgd
    sparse_lr: float = 0.01
    first_order_lr: float | None = None  # per-id bias tables; None: sparse_lr
    sparse_weight_decay: float = 0.0
    seed: int = 0
    log_every_n_steps: int = 20
    shuffle_buffer: int = 0  # rows mixed in a seeded buffer; 0 keeps file (time) order
    shuffle_files: bool = False  # reorder row groups every epoch (loses time order)
    # Loader processes featurizing while this one trains. 0 (default): a background thread
    # of this process reads ahead instead; on few cores that is faster (recsys.data.prefetch).
    num_workers: int = 0
    progress_bar: bool = True
    # TorchRec's TrainPipelineSparseDist: the input dist of batch i+1 overlaps batch i's compute
    pipeline: bool = True
    pin_memory: bool = False  # page-locked host batches, so copies to the GPU do not block
    eval_every_n_steps: int | None = None  # None: evaluate at epoch ends only
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None  # latest (newest checkpoint under checkpoint.search_dir) | PATH
    warm_start: str | None = None  # export or checkpoint folder: initial tables (+ dense part)
    warm_start_skip_mismatched: bool = False  # true: a resized table starts fresh, not an error
    deterministic: bool = False  # deterministic kernels: resumes match uninterrupted runs


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite under ./mlruns
    experiment: str = "recsys"
    run_name: str | None = None
    required: bool = False  # true: fail when MLflow cannot be reached; false: warn, go on
    parent_run_id: str | None = None  # nest the run under this one (sweeps set it)


@dataclass
class ShardingConfig:
    # auto (the planner chooses per table) | table_wise | column_wise | row_wise |
    # table_column_wise | data_parallel (forced on every table)
    type: str = "auto"


@dataclass
class ExportConfig:
    enabled: bool = True
    subdir: str = "export"  # under the run's output folder


@dataclass
class TrainConfig:
    data: DataConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    output_dir: str = "outputs/manual"  # the CLI sets Hydra's run dir here


def register_configs() -> None:
    """Put the typed schemas in Hydra's ConfigStore (base of conf/train.yaml and its groups)."""
    from hydra.core.config_store import ConfigStore

    # Group files (conf/data/*.yaml, ...) merge into the typed fields of TrainConfig, so they
    # are checked against DataConfig, ModelConfig, ... without naming a schema themselves.
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


# ---------------------------------------------------------------------------- schema resolution


@dataclass(frozen=True)
class ResolvedTable:
    name: str
    num_buckets: int
    embedding_dim: int
    pooling: Pooling
    features: tuple[str, ...]  # the lookup keys that read it (feature names for plain tables)


@dataclass(frozen=True)
class ResolvedLookup:
    """One read of a physical table by a feature: a KeyedJaggedTensor key and its hash rule.

    A plain table gives each feature one lookup keyed by the feature's name; double hashing
    and the quotient-remainder trick give two, whose pooled embeddings `combine` joins.
    """

    key: str
    feature: str
    table: str  # physical table
    seed: int  # mmh3 seed
    hash_buckets: int  # b = 1 + mmh3(id, seed) mod (hash_buckets - 1); 0 for missing ids
    part: LookupPart = LookupPart.bucket
    divisor: int = 1  # quotient / remainder: b - 1 divided by this
    combine: Combine = Combine.sum


@dataclass(frozen=True)
class ResolvedFeature:
    name: str
    kind: FeatureKind
    column: str
    table: str | None
    seed: int
    transform: DenseTransform
    delimiter: str | None
    dropout: float = 0.0
    mean: float = 0.0
    std: float = 1.0
    tower: Tower | None = None
    clip_min: float | None = None
    clip_max: float | None = None


@dataclass(frozen=True)
class Schema:
    """The feature schema with every default filled in and every cross-reference checked.

    Order matters and is fixed: features in declaration order, tables in order of first use.
    The model's feature axis, the KeyedJaggedTensor keys and the export all follow it.
    """

    label: LabelSpec
    features: tuple[ResolvedFeature, ...]
    tables: tuple[ResolvedTable, ...]  # physical tables
    lookups: tuple[ResolvedLookup, ...] = ()  # feature order; () = one plain lookup per feature

    def __post_init__(self) -> None:
        if not self.lookups:  # a schema from before per-table hashing options: all plain
            plain = tuple(
                ResolvedLookup(f.name, f.name, f.table, f.seed, self.table(f.table).num_buckets)
                for f in self.sparse_features
            )
            object.__setattr__(self, "lookups", plain)

    def lookups_of(self, feature: str) -> tuple[ResolvedLookup, ...]:
        return tuple(lk for lk in self.lookups if lk.feature == feature)

    @property
    def lookup_keys(self) -> list[str]:
        """The KeyedJaggedTensor keys, in order (== sparse feature names when all plain)."""
        return [lk.key for lk in self.lookups]

    def restrict(self, feature_names: set[str]) -> Schema:
        """The schema of some features only, with their lookups and the tables those read."""
        lookups = tuple(lk for lk in self.lookups if lk.feature in feature_names)
        used = {lk.table for lk in lookups}
        return Schema(
            label=self.label,
            features=tuple(f for f in self.features if f.name in feature_names),
            tables=tuple(t for t in self.tables if t.name in used),
            lookups=lookups,
        )

    @property
    def dense_features(self) -> tuple[ResolvedFeature, ...]:
        return tuple(f for f in self.features if f.kind is FeatureKind.dense)

    @property
    def sparse_features(self) -> tuple[ResolvedFeature, ...]:
        return tuple(f for f in self.features if f.kind is not FeatureKind.dense)

    def table(self, name: str) -> ResolvedTable:
        """A physical table by name (a qr table `t` becomes `t__q` and `t__r`)."""
        found = [t for t in self.tables if t.name == name]
        if not found:
            raise KeyError(f"no physical table {name!r}; tables: {[t.name for t in self.tables]}")
        return found[0]

    @property
    def columns(self) -> list[str]:
        """Every source column the schema reads, label first, without repeats."""
        cols = [self.label.column] + [f.column for f in self.features]
        return list(dict.fromkeys(cols))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=lambda e: e.value))

    def fingerprint(self) -> str:
        """A short hash of everything that decides how raw rows map to table rows."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Schema:
        return Schema(
            label=LabelSpec(**d["label"]),
            features=tuple(
                ResolvedFeature(
                    **{
                        **f,
                        "kind": FeatureKind(f["kind"]),
                        "transform": DenseTransform(f["transform"]),
                        "tower": Tower(f["tower"]) if f.get("tower") else None,
                    }
                )
                for f in d["features"]
            ),
            tables=tuple(
                ResolvedTable(
                    **{**t, "pooling": Pooling(t["pooling"]), "features": tuple(t["features"])}
                )
                for t in d["tables"]
            ),
            lookups=tuple(
                ResolvedLookup(
                    **{**lk, "part": LookupPart(lk["part"]), "combine": Combine(lk["combine"])}
                )
                for lk in d.get("lookups", ())
            ),
        )


def resolve_schema(data: DataConfig, default_dim: int) -> Schema:
    """Fill defaults and check the schema; errors name the offending `data.*` key."""
    if not data.features:
        raise ConfigError("data.features is empty: declare at least one feature in conf/data/.")
    features = tuple(_resolve_feature(name, spec) for name, spec in data.features.items())
    if not any(f.kind is not FeatureKind.dense for f in features):
        raise ConfigError(
            "data.features has no sparse (id / id_list) feature; the model needs one."
        )
    users: dict[str, list[str]] = {}
    for f in features:
        if f.table is not None:
            users.setdefault(f.table, []).append(f.name)
    for name in data.tables:
        if name not in users:
            raise ConfigError(
                f"data.tables.{name} is fed by no feature; remove it or point a feature's `table` at it."
            )
    tables = tuple(
        _resolve_table(name, data.tables.get(name), fs, default_dim) for name, fs in users.items()
    )
    # Deferred: recsys.lookups builds on the types defined here.
    from recsys.lookups import expand_tables

    physical, lookups = expand_tables(tables, data.tables, features)
    return Schema(label=data.label, features=features, tables=physical, lookups=lookups)


def _resolve_feature(name: str, spec: FeatureSpec) -> ResolvedFeature:
    dense = spec.kind is FeatureKind.dense
    if dense and spec.table is not None:
        raise ConfigError(f"data.features.{name}: a dense feature feeds no table; drop `table`.")
    if spec.delimiter is not None and spec.kind is not FeatureKind.id_list:
        raise ConfigError(f"data.features.{name}: `delimiter` only applies to kind=id_list.")
    if spec.std <= 0:
        raise ConfigError(f"data.features.{name}.std={spec.std}: must be > 0.")
    _check_clip(name, spec, dense)
    if not 0.0 <= spec.dropout < 1.0 or (dense and spec.dropout):
        raise ConfigError(
            f"data.features.{name}.dropout={spec.dropout}: need 0 <= dropout < 1, sparse features only."
        )
    return ResolvedFeature(
        name=name,
        kind=spec.kind,
        column=spec.column or name,
        table=None if dense else (spec.table or name),
        seed=int(spec.seed),
        transform=spec.transform,
        delimiter=spec.delimiter,
        dropout=float(spec.dropout),
        mean=float(spec.mean),
        std=float(spec.std),
        tower=spec.tower,
        clip_min=None if spec.clip_min is None else float(spec.clip_min),
        clip_max=None if spec.clip_max is None else float(spec.clip_max),
    )


def _check_clip(name: str, spec: FeatureSpec, dense: bool) -> None:
    bounds = (spec.clip_min, spec.clip_max)
    if bounds == (None, None):
        return
    if not dense:
        raise ConfigError(f"data.features.{name}: clip_min/clip_max apply to kind=dense only.")
    if None not in bounds and spec.clip_min > spec.clip_max:
        raise ConfigError(
            f"data.features.{name}: clip_min={spec.clip_min} > clip_max={spec.clip_max}."
        )


def _resolve_table(
    name: str, spec: TableSpec | None, features: list[str], default_dim: int
) -> ResolvedTable:
    if spec is None:
        raise ConfigError(
            f"feature(s) {features} feed table '{name}', but data.tables.{name} is not declared; "
            f"add it with its num_buckets."
        )
    if spec.num_buckets < 2:
        raise ConfigError(
            f"data.tables.{name}.num_buckets={spec.num_buckets}: need >= 2 (bucket 0 is reserved for missing ids)."
        )
    dim = spec.embedding_dim or default_dim
    if dim % 4 != 0:
        # FBGEMM's sharded kernels require a multiple of 4 columns per shard.
        raise ConfigError(
            f"embedding dim {dim} for table '{name}' is not a multiple of 4 (FBGEMM needs it); set model.embedding_dim or data.tables.{name}.embedding_dim."
        )
    return ResolvedTable(name, int(spec.num_buckets), dim, spec.pooling, tuple(features))
