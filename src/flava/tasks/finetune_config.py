"""Typed schema of `python -m flava.finetune` and a schema-generic config loader.

The schema reuses the pretraining run's `TrainingConfig` (Lightning, checkpoints, optimiser,
run directory) with fine-tuning defaults; `model` picks the backbone and the classifier head,
`task` the modality, loss and metrics, `data` the dataset kind and its splits.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flava.config import (
    CheckpointConfig,
    ConfigError,
    EvaluationConfig,
    LightningConfig,
    SourceConfig,
    TrainingConfig,
    _config_path,
    _one_line,
    check_directory,
    training_checks,
)

MODALITIES = ("text", "image", "multimodal")
TASK_TYPES = ("classification", "regression", "vqa")
DATA_KINDS = (
    "source",
    "embedded",
    "glue",
    "torchvision",
    "image_folder",
    "vqa",
    "snli_ve",
    "hateful_memes",
)
METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman", "auroc", "vqa_accuracy")
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
        lr_schedule="linear",
    )


@dataclass
class HeadConfig:
    """The classifier: Linear(D, hidden) -> activation -> dropout -> Linear(hidden, outputs)."""

    hidden_size: int = 1536
    """Width of the hidden layer (paper: 1536)."""
    activation: str = "gelu"
    """gelu, gelu_tanh, relu or quick_gelu."""
    dropout: float = 0.1
    """Dropout before the last layer."""
    pooling: str = "pooler"
    """pooler (dense + tanh on the encoder's CLS, as released) or cls (final-LayerNorm CLS)."""


@dataclass
class FinetuneModelConfig:
    """The backbone: a preset (random init) or pretrained weights, and the head."""

    preset: str = "flava_full"
    """flava_full, 900m, 1.8b, 2.7b, 4.8b, 10b or tiny (used when no weights are given)."""
    pretrained_model_key: str | None = None
    """Weights: a pretrained key (flava_full), our checkpoint or a transformers directory."""
    activation_checkpointing: bool = False
    """Non-re-entrant activation checkpointing in the encoders."""
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class TaskConfig:
    """What is predicted from which encoder, with which loss and metrics."""

    name: str = "task"
    """A label for reports."""
    modality: str = "text"
    """text (text encoder), image (image encoder) or multimodal (fused CLS)."""
    type: str = "classification"
    """classification (cross-entropy), regression (one output, MSE) or vqa (soft-label BCE)."""
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    """accuracy, f1, mcc, pearson, spearman, auroc, vqa_accuracy."""
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
    """File-layout datasets: questions / annotations / images (relative to data.root)."""
    size: int | None = None
    """Number of examples (embedded: scenes to generate; others: first N, None: all)."""
    seed: int = 0
    """Generator seed (embedded scenes)."""
    path: str | None = None
    """data.kind=source: this split's file or folder (default: data.source.path)."""


@dataclass
class FinetuneDataConfig:
    """Which dataset, where, and how its inputs are processed."""

    kind: str = "embedded"
    """source (your own data, see data.source), embedded, glue, torchvision, image_folder, vqa,
    snli_ve or hateful_memes."""
    source: SourceConfig = field(default_factory=lambda: SourceConfig(type="records"))
    """data.kind=source: how to read it (type records / image_folder / huggingface / webdataset
    / captions, path, image_column, text_columns, text_pair_column, label_column, ...); each
    split's name is the Hugging Face split, its path (if set) replaces source.path."""
    val_fraction: float = 0.0
    """Carve this seeded share (training.seed) of the training split out as the validation set;
    data.val is then not read (use when the data has no validation split)."""
    max_skipped_fraction: float = 0.1
    """Stop (with a checkpoint, exit 1) when more than this fraction of the training examples
    read were bad (unreadable or truncated images, SVG, empty texts, bad labels); 1 never stops."""
    name: str | None = None
    """embedded: image, pair or vqa; glue: the task (mnli ...); torchvision: cifar10 ..."""
    root: str | None = None
    """Dataset root directory (torchvision, image_folder, vqa, snli_ve, hateful_memes)."""
    download: bool = False
    """Let torchvision download the dataset (needs network access)."""
    hf_path: str = "glue"
    """Hugging Face dataset path for glue."""
    cache_dir: str | None = None
    """Hugging Face datasets cache directory (None: HF_DATASETS_CACHE or the default)."""
    train: SplitConfig = field(default_factory=SplitConfig)
    val: list[SplitConfig] = field(default_factory=lambda: [SplitConfig(name="val")])
    text_max_length: int = 128
    """Tokens per text (pairs included), [CLS] and [SEP] included."""
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


# ---------------------------------------------------------------------------------------------
# loading (schema-generic: flava.config.load_config validates the pretraining schema only)


def load_schema_config(argv: list[str], schema: type, check: Any = None) -> DictConfig:
    """Merge `schema` <- YAML files (config=...) <- dotlist; then `check(cfg)`; one-line errors."""
    file_args = [a for a in argv if a.startswith("config=")]
    overrides = [a for a in argv if not a.startswith("config=")]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"argument {item!r} is not key=value; e.g. training.batch_size=16")
    merged = OmegaConf.structured(schema)
    try:
        for arg in file_args:
            path = _config_path(arg.split("=", 1)[1])
            try:
                data = OmegaConf.load(path)
            except Exception as exc:  # yaml.YAMLError and friends
                first = str(exc).strip().splitlines()[0]
                raise ConfigError(f"{path}: not valid YAML ({first})") from None
            merged = OmegaConf.merge(merged, data)
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{_one_line(exc)} (see --help for the keys)") from None
    if check is not None:
        check(merged)
    if "run" in merged and "run_dir" in merged.run:
        check_directory(merged.run.run_dir, "run.run_dir")  # results are written at the end
    return merged


def describe_schema(schema: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per key with its type and default (for --help), nested dataclasses expanded."""
    defaults = defaults if defaults is not None else schema()
    hints = typing.get_type_hints(schema)
    lines = []
    for f in dataclasses.fields(schema):
        kind, value = hints[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(kind):
            lines += describe_schema(kind, f"{prefix}{f.name}.", value)
        else:
            name = getattr(kind, "__name__", None) if not typing.get_args(kind) else None
            if dataclasses.is_dataclass(value) or (
                isinstance(value, list) and value and dataclasses.is_dataclass(value[0])
            ):
                value = OmegaConf.to_container(OmegaConf.structured(value))
            lines.append(f"  {prefix}{f.name}: {name or kind} = {value!r}")
    return lines


def fail_checks(cfg: DictConfig, checks: list[tuple[bool, str, str]]) -> None:
    """Raise ConfigError for the first failed (ok, key, hint) check."""
    for ok, key, hint in checks:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise ConfigError(f"{key}={value!r} is invalid: {hint}")


def validate_finetune(cfg: DictConfig) -> None:
    """Value checks that types alone cannot express."""
    from flava.model.config import ACTIVATIONS
    from flava.model.presets import PRESET_NAMES

    m, k, d = cfg.model, cfg.task, cfg.data
    metrics = list(k.metrics)
    regression = k.type == "regression"
    checks = training_checks(cfg.training) + [
        (m.preset in PRESET_NAMES, "model.preset", f"must be one of {', '.join(PRESET_NAMES)}"),
        (m.head.hidden_size > 0, "model.head.hidden_size", "must be > 0"),
        (0 <= m.head.dropout < 1, "model.head.dropout", "must be in [0, 1)"),
        (m.head.activation in ACTIVATIONS, "model.head.activation", f"one of {ACTIVATIONS}"),
        (m.head.pooling in ("pooler", "cls"), "model.head.pooling", "must be pooler or cls"),
        (k.modality in MODALITIES, "task.modality", f"must be one of {', '.join(MODALITIES)}"),
        (k.type in TASK_TYPES, "task.type", f"must be one of {', '.join(TASK_TYPES)}"),
        (
            len(metrics) > 0 and set(metrics) <= set(METRICS),
            "task.metrics",
            f"must be a non-empty list of {', '.join(METRICS)}",
        ),
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
            k.type == "vqa" or "vqa_accuracy" not in metrics,
            "task.metrics",
            "vqa_accuracy needs task.type=vqa",
        ),
        (
            k.type != "vqa" or set(metrics) <= {"vqa_accuracy"},
            "task.metrics",
            "vqa tasks report vqa_accuracy",
        ),
        (
            k.monitor is None or k.monitor in [*metrics, "loss"],
            "task.monitor",
            f"must be one of the task's metrics {metrics} or loss",
        ),
        (d.kind in DATA_KINDS, "data.kind", f"must be one of {', '.join(DATA_KINDS)}"),
        (d.text_max_length >= 3, "data.text_max_length", "must be >= 3"),
        (d.answer_vocab_size >= 1, "data.answer_vocab_size", "must be >= 1"),
        (len(d.val) > 0 or d.val_fraction > 0, "data.val", "needs a split, or data.val_fraction"),
        (0 <= d.val_fraction < 1, "data.val_fraction", "must be in [0, 1)"),
        (0 <= d.max_skipped_fraction <= 1, "data.max_skipped_fraction", "must be in [0, 1]"),
        (
            len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
            "data.crop_scale",
            "must be [low, high] with 0 < low <= high <= 1",
        ),
    ]
    fail_checks(cfg, checks)
