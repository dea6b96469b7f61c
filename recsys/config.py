"""Typed configuration: the dataclasses every layer below the CLI takes.

Hydra composes YAML from `conf/` on top of these dataclasses (registered in the ConfigStore by
`register_configs`), so a misspelt key fails at composition instead of being silently ignored.
Every choice is a StrEnum with lower-case members, so a misspelt value fails there too, naming
the key and the valid values. Checks across fields and ranges live in `recsys.train.validate`.
Nothing below `recsys/cli/` sees a DictConfig.

The feature schema (`DataConfig.features` + `DataConfig.tables`) is the single source of truth:
the loader, the model, the export manifest and the serving scorer are all built from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

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
    """How ids reach a table's rows (README, "Hashing options"; `recsys.schema.expand`)."""

    plain = "plain"  # one hash into num_buckets rows
    double = "double"  # a second hash (second seed) as well, into this or a second table; summed
    qr = "qr"  # quotient-remainder: two small tables, combined by `combine` (Shi et al. 2019)
    # managed collisions (TorchRec MCH): ids that earn a row get one of their own, the rest
    # share a fallback row; rows are given and taken back by `managed.eviction`
    managed = "managed"


class ManagedEviction(StrEnum):
    """Which ids keep their rows when a managed table is full (TorchRec's MCH policies)."""

    lfu = "lfu"  # the most frequently seen ids, counted since each got its row
    lru = "lru"  # the most recently seen ids
    distance_lfu = "distance_lfu"  # frequency divided by steps since last seen


class Combine(StrEnum):
    """How the embeddings of one id's several lookups make one vector."""

    sum = "sum"
    product = "product"  # elementwise; hashing=qr on single-id features only


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
    # `label idx[:value] ...` or libFFM `label field:idx:value ...`; data.columns maps pairs to
    # columns by position, index range or field (recsys.schema.layout)
    libsvm = "libsvm"


class HoldoutBy(StrEnum):
    """Which training rows `data.holdout` keeps for validation (recsys.data.holdout)."""

    tail = "tail"  # the last rows in file order: the most recent ones, for a log sorted by time
    hash = "hash"  # a seeded pseudo-random share of rows (mmh3 of the row id): no order needed


class OnBadRow(StrEnum):
    """What a row that cannot be used does: stop the run, or get dropped and counted."""

    fail = "fail"
    skip = "skip"


class ModelName(StrEnum):
    """The architectures `model.name` picks; `recsys.model.registry` maps each to its head."""

    dlrm = "dlrm"
    dcn = "dcn"
    mf = "mf"
    fm = "fm"  # factorization machine: a baseline, and strong on small logs
    lr = "lr"  # hashed logistic regression: the baseline every model must beat


class DCNStructure(StrEnum):
    """How model=dcn joins its cross network and its deep part."""

    stacked = "stacked"  # cross -> over arch
    parallel = "parallel"  # cross || over arch, both on x0


class Device(StrEnum):
    cpu = "cpu"  # gloo process group, FBGEMM CPU kernels
    cuda = "cuda"  # NCCL process group, one GPU per process


class DenseOptimizer(StrEnum):
    adamw = "adamw"
    adam = "adam"
    sgd = "sgd"
    adagrad = "adagrad"


class SparseOptimizer(StrEnum):
    """Fused into the embedding backward by FBGEMM (`recsys.distributed.sharding`)."""

    rowwise_adagrad = "rowwise_adagrad"
    adagrad = "adagrad"
    adam = "adam"  # CUDA only: FBGEMM's CPU kernels have no fused Adam
    sgd = "sgd"


class LRDecay(StrEnum):
    none = "none"
    linear = "linear"
    cosine = "cosine"
    step = "step"  # x step_gamma every step_every steps


class StoppingMetric(StrEnum):
    auc = "auc"  # higher is better
    log_loss = "log_loss"  # lower is better
    ne = "ne"  # lower is better


class ShardingType(StrEnum):
    """auto: the planner chooses per table; any other forces that TorchRec type on every table."""

    auto = "auto"
    table_wise = "table_wise"
    column_wise = "column_wise"
    row_wise = "row_wise"
    table_column_wise = "table_column_wise"
    data_parallel = "data_parallel"


@dataclass
class LabelSpec:
    """How the click label is read. `threshold` set: label = value >= threshold."""

    column: str = "label"
    threshold: float | None = None


# Ids of a managed table are hashed (mmh3, 32 bits) into this many values before the remap:
# 1 + hash mod 2**32 is the hash itself, so two ids share an input only if their 32-bit
# hashes collide (about 1 in 4 billion per pair).
MANAGED_INPUT_HASH_SIZE = 2**32 + 1


@dataclass
class ManagedSpec:
    """`data.tables.<t>.managed`: how a `hashing: managed` table hands out its rows.

    The table keeps num_buckets rows (per row shard, the last one is the fallback row that every
    id without a row of its own shares). Every `eviction_interval` training steps the ids seen
    in those steps (over all ranks) compete with the ids holding rows; the policy decides who
    keeps or gets one. A row given to a new id restarts from a fresh initialization.
    """

    eviction: ManagedEviction = ManagedEviction.lfu
    # An id competes for a row only once seen at least this many times within one window of
    # eviction_interval steps (over all ranks); 1: every id seen competes.
    admit_after: int = 1
    eviction_interval: int = 1  # training steps per window (rows are reassigned after each)
    input_hash_size: int = MANAGED_INPUT_HASH_SIZE  # raw ids are hashed into [1, this) first
    # make train-days: an id not seen for this many days loses its row at the next day's start
    # (the row is zeroed and free for new ids); None: ids keep rows until evicted
    expire_after_days: int | None = None


@dataclass
class TableSpec:
    """One embedding table. Its memory is num_buckets x embedding_dim, whatever the id count.

    num_buckets None (or the table not declared at all): data.default_num_buckets.
    """

    num_buckets: int | None = None
    embedding_dim: int | None = None  # None: model.embedding_dim
    pooling: Pooling = Pooling.sum
    hashing: TableHashing = TableHashing.plain  # plain | double | qr | managed
    combine: Combine = Combine.sum  # qr: quotient and remainder embeddings, sum or product
    second_num_buckets: int | None = None  # double: rows of a second table; None: same table
    qr_remainder: int | None = None  # qr: remainder table rows R; None: ceil(sqrt(num_buckets))
    managed: ManagedSpec = field(default_factory=ManagedSpec)  # managed: eviction, admission


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
class HoldoutConfig:
    """Validation rows held out of data.train_path when data.valid_path is not set: each row
    is trained on or validated on, never both (recsys.data.holdout)."""

    fraction: float = 0.05  # share of the training rows; 0: none (validate on data.eval_path)
    by: HoldoutBy = HoldoutBy.tail
    seed: int = 0  # by=hash: mmh3 seed of the row-id hash


@dataclass
class DataConfig:
    name: str = MISSING
    train_path: str = MISSING  # file, folder, glob or pyarrow filesystem URI
    eval_path: str | None = None
    # Mid-run evaluations and early stopping use it when set; the final one uses eval_path.
    valid_path: str | None = None
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)  # when valid_path is not set
    format: DataFormat = DataFormat.parquet
    header: bool = True  # csv/tsv: the first line of every file names the columns
    # csv/tsv without header: the column names, in order; libsvm: which pairs of a line are
    # which column (`name` by position, `name=I-J` by index range, `name=field:F`)
    columns: list[str] | None = None
    on_bad_row: OnBadRow = OnBadRow.fail  # skip: drop unusable rows, count them by reason
    label: LabelSpec = field(default_factory=LabelSpec)
    features: dict[str, FeatureSpec] = field(default_factory=dict)
    tables: dict[str, TableSpec] = field(default_factory=dict)
    # Rows of a table whose num_buckets is not given (or that is not declared in `tables`):
    # 2**18 = 262,144 rows, 16 MiB at dim 16 (+1 MiB of per-id biases). Fine for up to ~25k
    # distinct ids (collision rate ~ distinct / buckets, ~10% there); bigger id sets want their
    # own num_buckets, as `recsys-data infer-schema` writes from the distinct counts.
    default_num_buckets: int = 1 << 18
    prepare_hint: str | None = None  # command that creates the files, shown when they are missing
    # make train-days: a glob of day folders (`PATH/day=*`), trained in sorted order, each one
    # warm-started from the day before and evaluated on the next (recsys.train.days)
    days: str | None = None


@dataclass
class ModelConfig:
    name: ModelName = ModelName.dlrm
    embedding_dim: int = 16
    dense_arch: list[int] = field(default_factory=lambda: [32])  # hidden sizes; -> embedding_dim
    over_arch: list[int] = field(default_factory=lambda: [64, 32])  # hidden sizes; -> 1 logit
    first_order: bool = True  # a learned bias per id (wide part), as in wide-and-deep / FM
    bias_in_rows: bool = False  # first-order biases in the embedding rows: one lookup per id
    deep_embeddings: bool = False  # over arch also reads the embeddings (DeepFM-style)
    dropout: float = 0.2
    # model=dcn: cross layers x_{l+1} = x0 * (W x_l + b) + x_l on concat(dense, embeddings)
    cross_layers: int = 2
    low_rank: int | None = None  # W = U V^T with this rank; None: full rank
    structure: DCNStructure = DCNStructure.stacked  # model=dcn only


@dataclass
class CheckpointConfig:
    """When to write `<output_dir>/checkpoints/step_<N>/` (see recsys/train/checkpoint.py)."""

    every_n_steps: int | None = None  # None: no mid-epoch checkpoints
    at_epoch_end: bool = True
    keep_last: int = 2  # older complete checkpoints are deleted after each new one
    search_dir: str = "outputs"  # where trainer.resume=latest looks, across runs

    @property
    def writes_any(self) -> bool:
        """Whether the run writes checkpoints at all (if not, it keeps none once it ends)."""
        return self.at_epoch_end or self.every_n_steps is not None


@dataclass
class LRScheduleConfig:
    """Learning-rate factor over steps: linear warmup, then decay down to min_lr_ratio.

    Applied to the dense optimizer and to the fused sparse ones (TorchRec hands the lr of
    their param groups to FBGEMM at every step).
    """

    warmup_steps: int = 0
    decay: LRDecay = LRDecay.none
    decay_steps: int | None = None  # None: the run's estimated total steps minus warmup
    min_lr_ratio: float = 0.0  # floor of the factor (linear, cosine, step)
    step_every: int = 1000  # decay=step: multiply by step_gamma every this many steps
    step_gamma: float = 0.1


@dataclass
class EarlyStoppingConfig:
    """Stop when the validation metric has not improved for `patience` evaluations; the
    final model is then the best one on validation (recsys.train.best)."""

    enabled: bool = True
    metric: StoppingMetric = StoppingMetric.auc
    patience: int = 3  # evaluations without improvement before stopping
    min_delta: float = 0.0  # an improvement smaller than this does not count
    # Write a checkpoint of each new best step and load it back when training ends, so the
    # model evaluated, exported and checkpointed last is the best one, not the last one.
    # On by default: on the planted cold-start world the last epoch had overfit (eval AUC
    # 0.563, log loss 1.18) where the restored best step gave 0.644 / 0.566 (beating the
    # hashed LR's 0.640); on adult the best was the last; on MovieLens it moved eval by
    # -0.003 (seed 0) while validation rose 0.7440 -> 0.7477.
    restore_best: bool = True


@dataclass
class TrainerConfig:
    device: Device = Device.cpu
    epochs: int = 10  # an upper bound (early stopping): conf/trainer/cpu.yaml says why
    max_steps: int | None = None  # stop after this many steps, whatever the epoch count
    batch_size: int = 512
    eval_batch_size: int = 4096
    optimizer: DenseOptimizer = DenseOptimizer.adamw
    lr: float = 1e-3  # dense optimizer
    weight_decay: float = 0.0  # dense optimizer
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    momentum: float = 0.0  # sgd
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    sparse_optimizer: SparseOptimizer = SparseOptimizer.rowwise_adagrad
    sparse_lr: float = 0.01
    first_order_lr: float | None = None  # per-id bias tables; None: sparse_lr (/ 10 after a stage)
    # Adagrad's offset in the bias tables' step, per training row (FTRL-Proximal's beta): a
    # bias row's step is g / (beta / batch_size + sqrt(sum of its g^2)) x its lr, g its gradient
    # of the batch's mean loss. 0: a row's first step is a full lr, whatever its g, so ids seen
    # once or twice take their few labels at face value. Not the embedding tables': their
    # gradients start near 0 (they scale with the other embeddings), and there an offset kept
    # them from ever learning the interactions (synthetic pairwise AUC 0.750 -> 0.669).
    # Used with the Adagrad optimizers only (sgd has no offset; Adam's eps is another thing).
    first_order_adagrad_beta: float = 1.0
    # First the first-order terms alone (a hashed LR on the same tables) to their best validation,
    # then the whole model from those biases (recsys/train/stages.py).
    first_order_stage: bool = True
    # The stage's dense lr (its global bias and linear term of the dense features; None: lr):
    # a logistic regression's one linear layer wants a bolder step than the deep part's.
    first_order_stage_lr: float | None = 0.01
    sparse_weight_decay: float = 0.0  # fused L2 in FBGEMM's GPU kernels (rowwise_adagrad only)
    # L2 on the embedding and bias rows each batch touches (their pooled vectors), added to
    # the loss: lambda * sum over features of ||pooled||^2, averaged over rows. Works on every
    # device, unlike sparse_weight_decay, which FBGEMM's CPU kernels ignore.
    embedding_l2: float = 0.0
    seed: int = 0
    log_every_n_steps: int = 20
    shuffle_buffer: int = 0  # rows mixed in a seeded buffer; 0 keeps file (time) order
    shuffle_files: bool = False  # reorder row groups every epoch (loses time order)
    # Loader processes featurizing while this one trains. 0 (default): a background thread
    # of this process reads ahead instead; on few cores that is faster (recsys.data.prefetch).
    num_workers: int = 0
    progress_bar: bool = True
    # TorchRec's TrainPipelineSparseDist: the input dist of batch i+1 overlaps batch i's compute.
    # None: on where there is something to overlap (recsys.train.steppers.uses_pipeline)
    pipeline: bool | None = None
    pin_memory: bool = False  # page-locked host batches, so copies to the GPU do not block
    eval_every_n_steps: int | None = None  # None: evaluate at epoch ends only
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None  # latest (newest checkpoint under checkpoint.search_dir) | PATH
    warm_start: str | None = None  # export or checkpoint folder: initial tables (+ dense part)
    warm_start_skip_mismatched: bool = False  # true: a resized table starts fresh, not an error
    warm_start_optimizer: bool = False  # from a checkpoint: its optimizer state too (train-days)
    # managed ids that lose their rows at the warm start (.npz, one int64 array per table):
    # written by train-days' expiry (data.tables.<t>.managed.expire_after_days)
    warm_start_expire: str | None = None
    deterministic: bool = False  # deterministic kernels: resumes match uninterrupted runs


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite under ./mlruns
    experiment: str = "recsys"
    run_name: str | None = None
    required: bool = True  # true: fail when MLflow cannot be reached; false: warn, go on untracked
    parent_run_id: str | None = None  # nest the run under this one (sweeps set it)
    # Register the run's model under this name (None: log it, do not register); the alias
    # `champion` moves to a new version only when it beats the champion's validation AUC.
    register_as: str | None = None
    # At the end of a run, seconds to wait for tracking calls still queued (server away).
    flush_timeout_s: float = 60.0


@dataclass
class ShardingConfig:
    type: ShardingType = ShardingType.auto


class TableDtype(StrEnum):
    """How the serving export stores embedding tables (recsys.export.quantize)."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"  # row-wise affine: per-row float32 scale and bias, uint8 codes


@dataclass
class ExportConfig:
    enabled: bool = True
    subdir: str = "export"  # under the run's output folder
    table_dtype: TableDtype = TableDtype.fp32
    quantization_eval_rows: int = 50_000  # eval rows scored to measure a quantized export


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
