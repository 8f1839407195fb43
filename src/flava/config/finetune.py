"""Typed schema of `python -m flava.finetune` and its checks.

The schema reuses the pretraining run's `TrainingConfig` (Lightning, checkpoints, optimiser,
run directory) with fine-tuning defaults; `model` picks the backbone and the classifier head,
`task` the modality, loss and metrics, `data` the dataset kind and its splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flava.config.checks import Check, Choice, fail_checks
from flava.config.common import (
    CheckpointConfig,
    EvaluationConfig,
    LightningConfig,
    LrSchedule,
    SourceDataConfig,
    TrainableModelConfig,
    TrainingConfig,
    data_section_checks,
    training_checks,
)
from flava.config.common import model_checks as shared_model_checks


class Modality(Choice):
    """Which encoder's CLS the head reads."""

    text = "text"
    image = "image"
    multimodal = "multimodal"


class TaskType(Choice):
    """The loss: cross-entropy, MSE on one output, or soft-label BCE over answers."""

    classification = "classification"
    regression = "regression"
    vqa = "vqa"


class DataKind(Choice):
    """Where the fine-tuning examples come from."""

    source = "source"
    embedded = "embedded"
    glue = "glue"
    torchvision = "torchvision"
    image_folder = "image_folder"
    vqa = "vqa"
    snli_ve = "snli_ve"
    hateful_memes = "hateful_memes"


class Metric(Choice):
    """A reported metric."""

    accuracy = "accuracy"
    f1 = "f1"
    mcc = "mcc"
    pearson = "pearson"
    spearman = "spearman"
    auroc = "auroc"
    vqa_accuracy = "vqa_accuracy"


class Pooling(Choice):
    """How the encoder's CLS becomes the head's input."""

    pooler = "pooler"
    cls = "cls"


MODALITIES = Modality.values()
TASK_TYPES = TaskType.values()
DATA_KINDS = DataKind.values()
METRICS = Metric.values()
REGRESSION_METRICS = ("pearson", "spearman")
ALL_VALIDATION_BATCHES = 10**9


def _training() -> TrainingConfig:
    return TrainingConfig(
        lightning=LightningConfig(
            max_steps=1000, limit_val_batches=ALL_VALIDATION_BATCHES, log_every_n_steps=10
        ),
        # last.ckpt (resume) at every validation; the best one is kept separately (best-*.ckpt)
        lightning_checkpoint=CheckpointConfig(
            filename="finetune-{step}", every_n_train_steps=None, save_top_k=0
        ),
        evaluation=EvaluationConfig(enabled=False),
        run_dir="runs/finetune",
        batch_size=32,
        learning_rate=2e-5,
        adam_weight_decay=0.01,
        warmup_steps=100,
        lr_schedule=LrSchedule.linear,
    )


@dataclass
class HeadConfig:
    """The classifier: Linear(D, hidden) -> activation -> dropout -> Linear(hidden, outputs)."""

    hidden_size: int = 1536
    """Width of the hidden layer (paper: 1536)."""
    activation: str = "gelu"
    """gelu, gelu_tanh, relu or quick_gelu (the model's activations)."""
    dropout: float = 0.1
    """Dropout before the last layer."""
    pooling: Pooling = Pooling.pooler
    """pooler (dense + tanh on the encoder's CLS, as released) or cls (final-LayerNorm CLS)."""


@dataclass
class FinetuneModelConfig(TrainableModelConfig):
    """The backbone: a preset (random init) or pretrained weights, and the head."""

    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class TaskConfig:
    """What is predicted from which encoder, with which loss and metrics."""

    name: str = "task"
    """A label for reports."""
    modality: Modality = Modality.text
    """text (text encoder), image (image encoder) or multimodal (fused CLS)."""
    type: TaskType = TaskType.classification
    """classification (cross-entropy), regression (one output, MSE) or vqa (soft-label BCE)."""
    metrics: list[Metric] = field(default_factory=lambda: [Metric.accuracy])
    """Metrics to report (regression: pearson / spearman; vqa: vqa_accuracy)."""
    monitor: str | None = None
    """Metric picking the best checkpoint (default: the first metric; `loss` minimises)."""


@dataclass
class SplitConfig:
    """One split of the dataset."""

    name: str = "train"
    """Split name (GLUE / torchvision / embedded split, or image_folder subfolder)."""
    label: str | None = None
    """Name of an extra validation split in metric keys: val_<label>/<metric>."""
    files: dict[str, str] = field(default_factory=dict)
    """File-layout datasets: questions / annotations / images (relative to data.root, or to
    data.source.path with data.kind=source)."""
    size: int | None = None
    """Number of examples (embedded: scenes to generate; others: first N, None: all)."""
    seed: int = 0
    """Generator seed (embedded scenes)."""
    path: str | None = None
    """data.kind=source: this split's file or folder (default: data.source.path)."""


@dataclass
class FinetuneDataConfig(SourceDataConfig):
    """Which dataset, where, and how its inputs are processed."""

    kind: DataKind = DataKind.embedded
    """source: your own data, see data.source (each split's name is the Hugging Face split,
    its path, if set, replaces data.source.path)."""
    val_fraction: float = 0.0
    """Carve this seeded share (training.seed) of the training split out as the validation set;
    data.val is then not read (use when the data has no validation split)."""
    name: str | None = None
    """embedded: image, pair or vqa; glue: the task (mnli ...); torchvision: cifar10 ..."""
    root: str | None = None
    """Dataset root directory (torchvision, image_folder, vqa, snli_ve, hateful_memes)."""
    download: bool = False
    """Let torchvision download the dataset (needs network access)."""
    hf_path: str = "glue"
    """glue: the Hugging Face dataset (glue, nyu-mll/glue), or a directory of save_to_disk tasks
    (DIR/<task>, as `flava.evaluate` reads GLUE)."""
    cache_dir: str | None = None
    """Hugging Face datasets cache directory (None: HF_DATASETS_CACHE or the default)."""
    train: SplitConfig = field(default_factory=SplitConfig)
    """The training split."""
    val: list[SplitConfig] = field(default_factory=lambda: [SplitConfig(name="val")])
    """Validation splits (the first picks the best checkpoint)."""
    answer_vocab_size: int = 3129
    """VQA: answers kept (the most frequent in the training annotations)."""
    augment: bool = False
    """Random resized crops (+ flips) for training images; evaluation always centre-crops."""
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    """Random resized crop scale range (augment)."""
    hflip: bool = True
    """Horizontal flips (augment)."""


@dataclass
class FinetuneConfig:
    """The whole fine-tuning run."""

    training: TrainingConfig = field(default_factory=_training)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)


def model_checks(m: FinetuneModelConfig) -> list[Check]:
    """Value checks of the model section (its shared keys, the head)."""
    from flava.model.config import ACTIVATIONS

    return [
        *shared_model_checks(m),
        (m.head.hidden_size > 0, "model.head.hidden_size", "must be > 0"),
        (0 <= m.head.dropout < 1, "model.head.dropout", "must be in [0, 1)"),
        (m.head.activation in ACTIVATIONS, "model.head.activation", f"one of {ACTIVATIONS}"),
    ]


def task_checks(k: TaskConfig) -> list[Check]:
    """Value checks of the task section: metrics that fit the task type, the monitor."""
    metrics = [str(m) for m in k.metrics]
    regression = k.type == TaskType.regression
    return [
        (len(metrics) > 0, "task.metrics", f"must be a non-empty list of {', '.join(METRICS)}"),
        (
            (set(metrics) <= set(REGRESSION_METRICS)) if regression else True,
            "task.metrics",
            "regression tasks report pearson and / or spearman",
        ),
        (
            not (set(metrics) & set(REGRESSION_METRICS)) or regression,
            "task.metrics",
            "pearson / spearman need task.type=regression",
        ),
        (
            k.type == TaskType.vqa or "vqa_accuracy" not in metrics,
            "task.metrics",
            "vqa_accuracy needs task.type=vqa",
        ),
        (
            k.type != TaskType.vqa or set(metrics) <= {"vqa_accuracy"},
            "task.metrics",
            "vqa tasks report vqa_accuracy",
        ),
        (
            k.monitor is None or k.monitor in [*metrics, "loss"],
            "task.monitor",
            f"must be one of the task's metrics {metrics} or loss",
        ),
    ]


def data_checks(d: FinetuneDataConfig) -> list[Check]:
    """Value checks of the data section."""
    return [
        *data_section_checks(d, "data"),
        (d.answer_vocab_size >= 1, "data.answer_vocab_size", "must be >= 1"),
        (len(d.val) > 0 or d.val_fraction > 0, "data.val", "needs a split, or data.val_fraction"),
        (0 <= d.val_fraction < 1, "data.val_fraction", "must be in [0, 1)"),
        (
            len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
            "data.crop_scale",
            "must be [low, high] with 0 < low <= high <= 1",
        ),
    ]


def validate_finetune(cfg: FinetuneConfig) -> None:
    """Value checks that types alone cannot express."""
    checks = [
        *training_checks(cfg.training),
        *model_checks(cfg.model),
        *task_checks(cfg.task),
        *data_checks(cfg.data),
    ]
    fail_checks(cfg, checks)
