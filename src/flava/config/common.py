"""Sections more than one command uses: the model (every command), what every data section
holds, prompts, Lightning, checkpoints, optimisation, one dataset; the data and run sections of
the evaluation commands. Each setting is declared once, here or in one command's schema."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flava.config.checks import Check, Choice, check_directory, choices, fail_checks

DEFAULT_PRESET = "flava_full"
"""model.preset of every command: the paper's model (the original release built no other)."""

TEMPLATE_SETS = ("imagenet80", "imagenet7")
"""Named zero-shot template sets (training.evaluation.templates, zero_shot.templates)."""


@dataclass
class ModelConfig:
    """Weights through from_pretrained, or a preset built with random weights."""

    preset: str = DEFAULT_PRESET
    """Architecture built with random weights when no pretrained_model_key is given: flava_full,
    900m, 1.8b, 2.7b, 4.8b, 10b or tiny (14M parameters, what the tests use)."""
    pretrained_model_key: str | None = None
    """Start from weights: a pretrained key (flava_full), our save_pretrained directory (a run's
    model/), a transformers directory or an original-release (TorchMultimodal) .pt / .ckpt file
    (the preset is then not used)."""


@dataclass
class TrainableModelConfig(ModelConfig):
    """The model of a command that trains it (pretraining, fine-tuning)."""

    activation_checkpointing: bool = False
    """Non-re-entrant activation checkpointing in every encoder."""


@dataclass
class DataSectionConfig:
    """What every command's data section holds (datasets.* of pretraining, data.* of others)."""

    text_max_length: int = 77
    """Tokens per text, [CLS] and [SEP] included (a sentence pair: both together); at most the
    text encoder's positions (flava_full 512, tiny 128). The paper's captions: 77."""
    max_skipped_fraction: float = 0.1
    """Stop (exit 1; a training run writes a checkpoint first, an evaluation its counts to
    metrics.json) when more than this fraction of the samples read so far were bad
    (unreadable or truncated images, SVG, empty texts, bad labels); 1 never stops."""


@dataclass
class PromptConfig:
    """Class names and prompt templates of zero-shot classification."""

    class_names: str | None = None
    """JSON list file of class names in label order (default: the dataset's: folder names with
    "_" read as spaces, ImageNet's for its 1000 wnid folders, or a dataset's label names)."""
    templates: str | None = None
    """Prompt templates: a JSON list file of templates with {}, imagenet80 or imagenet7 (default:
    the scenes' own for embedded data, imagenet80 for ImageNet folders, else "a photo of a
    {}.")."""


PRECISIONS = (
    "auto",
    "32",
    "32-true",
    "64",
    "64-true",
    "bf16-mixed",
    "bf16-true",
    "bf16",
    "16-mixed",
    "16-true",
    "16",
)
"""Every accepted value of training.lightning.precision: Lightning's spellings ("32" and 32
both read as "32")."""

if TYPE_CHECKING:  # its spellings are not Python names: a checker knows it as a `Choice`
    Precision = Choice
else:
    Precision = choices("Precision", PRECISIONS, __name__)
"""training.lightning.precision: a member per spelling of `PRECISIONS`."""


class AttentionKernel(Choice):
    """training.attention_kernel: how attention is computed (flava.model.attention)."""

    auto = "auto"
    sdpa = "sdpa"
    explicit = "explicit"


if TYPE_CHECKING:  # "return" is not a Python name: a checker knows it as a `Choice`
    HostMemory = Choice
else:
    HostMemory = choices("HostMemory", ("auto", "reuse", "return", "system"), __name__)
"""training.host_memory: how glibc's malloc serves a CPU step's large tensors
(flava.training.host_memory)."""


class LoggerName(Choice):
    """A Lightning logger of training.loggers (built in flava.training.run)."""

    csv = "csv"
    tensorboard = "tensorboard"
    wandb = "wandb"
    mlflow = "mlflow"


LOGGER_INSTALLS = {
    "tensorboard": "pip install tensorboard",
    "wandb": "pip install 'flava[wandb]'",
    "mlflow": "pip install 'flava[mlflow]'",
}
"""How to install the package of each logger of training.loggers that needs one."""

MLFLOW_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
"""URI schemes of MLflow's database stores (they need sqlalchemy and alembic)."""


class WeightDecayGroups(Choice):
    """Which parameters AdamW's weight decay applies to."""

    all = "all"
    matrices = "matrices"


class LrSchedule(Choice):
    """Decay of the learning rate after the linear warm-up."""

    cosine = "cosine"
    linear = "linear"
    constant = "constant"


@dataclass
class LightningConfig:
    """Arguments passed to `lightning.Trainer` (a typed subset)."""

    max_steps: int = 1000
    """Optimiser steps to train for (-1: until max_epochs / max_time)."""
    max_epochs: int | None = None
    """Passes over the data (None: unlimited; mixed sources are endless)."""
    max_time: str | None = None
    """Wall-clock limit "DD:HH:MM:SS" (None: none)."""
    accelerator: str = "auto"
    """cpu, gpu, cuda, mps or auto."""
    devices: Any = "auto"
    """Devices per node: an int, a list of ids, or auto."""
    num_nodes: int = 1
    """Number of nodes (torchrun / SLURM set the rest)."""
    strategy: str = "auto"
    """auto, ddp, fsdp, or another Lightning strategy name."""
    precision: Precision = Precision("32")
    """auto picks bf16-mixed on GPUs with bf16, 16-mixed on older GPUs, 32 on CPUs without
    native bf16 (the choice is saved in config.yaml). bf16 / fp16 on a CPU without native
    support stop before any work (LayerNorm, softmax and losses stay fp32 under mixed
    precision)."""
    force_precision: bool = False
    """Train in a bf16 / fp16 precision even on hardware that has no native support for it."""
    gradient_clip_val: float | None = 1.0
    """Clip the gradient norm (None: no clipping)."""
    accumulate_grad_batches: int = 1
    """Batches per optimiser step."""
    val_check_interval: int | None = None
    """Validate every N training steps (None: only at the end)."""
    limit_val_batches: int = 8
    """Validation batches per source kind."""
    num_sanity_val_steps: int = 0
    """Validation batches run before training."""
    log_every_n_steps: int = 10
    """Logging interval."""
    enable_progress_bar: bool = True
    """Show a progress bar."""
    deterministic: bool = False
    """Ask PyTorch for deterministic kernels."""
    gpus: Any = None
    """Deprecated spelling of devices (kept for the original release's configs)."""


@dataclass
class CheckpointConfig:
    """Arguments of Lightning's ModelCheckpoint."""

    dirpath: str | None = None
    """Where to write checkpoints (None: <run_dir>/checkpoints)."""
    filename: str = "flava-{step}"
    """Checkpoint file name pattern."""
    every_n_train_steps: int | None = 500
    """Write a checkpoint every N steps (None: only the last)."""
    save_last: bool = True
    """Keep last.ckpt up to date."""
    save_top_k: int = -1
    """How many periodic checkpoints to keep (-1: all)."""
    save_on_train_epoch_end: bool = True
    """Also write one at the end of an epoch."""
    verbose: bool = False
    """Log each write."""


@dataclass
class EvaluationConfig(PromptConfig):
    """Zero-shot evaluation callback (classification by prompts, retrieval with every caption);
    class_names and templates apply to labelled datasets.image.val entries."""

    enabled: bool = True
    """Run zero-shot evaluation before and after training."""
    every_n_steps: int | None = None
    """Also evaluate every N steps (None: only before and after)."""
    num_samples: int = 256
    """Validation images (with all their captions) to evaluate on (embedded scenes: at most
    the number of distinct held-out scenes)."""
    batch_size: int = 64
    """Embedding batch size."""


@dataclass
class TrainingConfig:
    """Optimisation, run directory, checkpoints and Lightning."""

    lightning: LightningConfig = field(default_factory=LightningConfig)
    lightning_checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    lightning_load_from_checkpoint: str | None = None
    """Resume from this Lightning checkpoint (model, optimiser, scheduler, step, data position)."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    run_dir: str = "runs/flava"
    """Run directory: config.yaml, metrics.json, logs, checkpoints, model/, curves.png. A local
    folder, or an fsspec URL (s3://bucket/run, gs://..., with s3fs / gcsfs installed): files are
    written there directly, the model folder uploaded once written (not with strategy fsdp)."""
    upload_retries: int = 4
    """Times an upload to a URL run_dir (a checkpoint, model/) is tried again after a failure,
    with back-off; a checkpoint whose upload still fails leaves the last good one in place (the
    run goes on; its local copy is kept and named), model/ stops the run (exit 1)."""
    upload_backoff: float = 2.0
    """Seconds before the first retry of an upload, doubled at each further one."""
    upload_wait: float = 7200.0
    """Seconds the other processes wait for rank 0 to finish its uploads to a URL run_dir
    (after training, and at the end with model/ and the report). Checkpoints during training are
    written locally and uploaded in the background, so no process waits for the store then."""
    process_group_timeout: float = 1800.0
    """Seconds a process waits for the others in a collective (ddp, fsdp) before failing."""
    loggers: list[LoggerName] = field(
        default_factory=lambda: [LoggerName.csv, LoggerName.tensorboard]
    )
    """Where logged metrics go: csv (<run_dir>/logs/metrics.csv; required, metrics.json and
    curves.png are read from it), tensorboard (<run_dir>/logs/tensorboard), wandb (<run_dir>/wandb,
    a local folder: for a URL run_dir, under the system's temporary folder; with
    WANDB_MODE=offline an offline run, no network; pip install 'flava[wandb]'), mlflow (see
    training.mlflow_tracking_uri; pip install 'flava[mlflow]'). A logger whose package is missing
    stops the run before any work."""
    logger_project: str = "flava"
    """The wandb project and MLflow experiment a run is logged under (the run is named after the
    last folder of training.run_dir)."""
    mlflow_tracking_uri: str | None = None
    """Where the mlflow logger writes: a tracking server or store URI (None: MLFLOW_TRACKING_URI
    when set, else the local database <run_dir>/mlflow.db, which needs no network)."""
    seed: int = 0
    """Global seed (-1: draw one and record it)."""
    batch_size: int = 8
    """Per-process batch size."""
    num_workers: int = 2
    """DataLoader worker processes per process."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (paper: 1e-3)."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    adam_weight_decay: float = 0.1
    """AdamW weight decay, applied to the parameters training.weight_decay_groups names."""
    weight_decay_groups: WeightDecayGroups = WeightDecayGroups.all
    """all: every trainable parameter is decayed, the logit scale included (the original
    release's AdamW over all parameters; the paper does not say); matrices: not 1-D tensors
    (biases, norm weights, the logit scale) nor the image and multimodal class tokens, the
    image mask token and image position embeddings (the text encoder's word, position and
    type embeddings are decayed)."""
    warmup_steps: int = 10000
    """Linear warm-up steps."""
    lr_schedule: LrSchedule = LrSchedule.cosine
    """Decay after warm-up."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak."""
    lr_decay_steps: int | None = None
    """Length of the schedule in steps (None: training.lightning.max_steps)."""
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    """Learning-rate multipliers by parameter-name prefix, e.g. {flava.image_encoder: 0.25}
    (the longest matching prefix wins; warm-up and decay scale every group alike)."""
    nonfinite_patience: int = 20
    """Stop (with a checkpoint) after this many optimiser steps in a row with non-finite values."""
    compile: Any = "auto"
    """true, false or auto: torch.compile each transformer layer of a pretraining run (after
    sharding under fsdp; with DDP alike). auto compiles a run of at least 500 steps in half
    precision on a GPU, or in bf16 on an x86 CPU with AVX512-BF16 or AMX (where it was measured
    faster); the choice
    is logged and kept in the run's config.yaml."""
    contrastive_accumulation: bool = False
    """Pretraining under lightning.accumulate_grad_batches=k: one global contrastive loss over
    all k micro-batches of an optimizer step (their embeddings cached, then recomputed with
    gradients), so the contrastive batch is processes x batch_size x k; costs one more forward
    pass of the unimodal encoders per pair batch. Other objectives are unchanged."""
    attention_kernel: AttentionKernel = AttentionKernel.auto
    """sdpa (PyTorch's fused attention), explicit (two matrix products around a softmax), or auto
    (in bf16 / fp16 the faster of the two, measured at the start of the run; in fp32 sdpa). The
    choice is logged and kept in checkpoints (a resumed run keeps it)."""
    host_memory: HostMemory = HostMemory("auto")
    """On CPU, `reuse` keeps freed blocks in the heap for the next step (no page faults on the
    step's large tensors), `return` gives them back to the system at once (less memory, slower
    steps), `system` leaves glibc's malloc alone; auto is return under fsdp on CPU, reuse on
    other CPU runs and system on GPUs."""


@dataclass
class SourceConfig:
    """One dataset. `type: embedded` is the built-in generated scenes (no download). Each type
    reads only its own fields (`flava.data.sources`): setting another type's field is refused."""

    type: str = "embedded"
    """embedded, huggingface, webdataset, image_folder, captions, records, karpathy,
    text_files, or a downstream layout: glue, torchvision, vqa, snli_ve, hateful_memes (checked
    by the data layer, which holds one reader per type)."""
    key: str | None = None
    """Dataset key: on the Hugging Face Hub (huggingface; glue: default glue, or a directory of
    save_to_disk tasks), or a torchvision set (torchvision: cifar10, food101, ...)."""
    subset: str | None = None
    """Hugging Face subset / configuration name (glue: the task, e.g. mnli)."""
    split: str | None = None
    """Split to read (default: train / validation by role)."""
    size: int = 10000
    """Number of samples (embedded scenes)."""
    seed: int = 0
    """Seed of the generator (embedded scenes)."""
    rename_columns: list[list[str]] = field(default_factory=list)
    """[[old, new], ...] column renames (type huggingface)."""
    split_key_mapping: dict[str, str] = field(default_factory=dict)
    """Map the split a role asks for to the split the dataset has, e.g. {validation: train}."""
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    """Columns holding text."""
    text_pair_column: str | None = None
    """Column holding a second text (sentence pairs; fine-tuning)."""
    image_column: str = "image"
    """Column holding the image (records: a path relative to image_root)."""
    image_root: str | None = None
    """records: folder the image paths are relative to (default: the records file's folder)."""
    classes: list[str] = field(default_factory=list)
    """image_folder: class folder names in label order (default: sorted folder names)."""
    weight: float = 1.0
    """Sampling weight among datasets of the same kind."""
    path: str | None = None
    """Local data: folder (image_folder, captions), a JSONL / CSV file (records), text files,
    or a save_to_disk dataset; the dataset root (torchvision, vqa, snli_ve, hateful_memes)."""
    shards: list[str] = field(default_factory=list)
    """webdataset shards: files, folders of *.tar, {000000..000009} patterns, globs, URLs."""
    captions_file: str | None = None
    """captions: JSONL or CSV file under path (default: captions.jsonl / captions.csv)."""
    files: dict[str, str] = field(default_factory=dict)
    """vqa, snli_ve, hateful_memes: the layout's files under path (questions / annotations /
    images / image_pattern)."""
    download: bool = False
    """torchvision: let torchvision download the set into path (needs network access)."""
    label_column: str = "label"
    """Column / field holding an integer class label (optional)."""
    remove_columns: list[str] = field(default_factory=list)
    """Columns to drop (type huggingface; unused columns are dropped anyway)."""
    data_files: list[str] = field(default_factory=list)
    """Data files for a packaged Hugging Face builder key (parquet, json, csv, ...)."""
    streaming: bool = False
    """Read a Hugging Face dataset as a stream (large sets: nothing downloaded up front)."""
    stream_shards: int = 16
    """Shards a dataset saved on disk is split into when streamed (path + streaming)."""
    shuffle_buffer: int = 1000
    """Sample shuffle buffer of a streamed source (webdataset, streaming; <= 1: none)."""
    resampled: bool = False
    """Streamed sources: draw shards with replacement per reader (multi-node), no epochs."""
    preview_size: int = 1024
    """Samples from the start of a stream for validation batches and the k-means fit."""
    cache_dir: str | None = None
    """Hugging Face datasets cache directory (None: HF_DATASETS_CACHE)."""
    gated: bool = False
    """Needs your Hugging Face token (hf auth login / HF_TOKEN; never written anywhere)."""
    timeout: float = 5.0
    """Seconds to wait for a remote dataset or shard before failing."""
    retries: int = 3
    """Remote shards (http, pipe:, fsspec such as s3://): times in a row a shard is reopened after
    a failed read, at the byte it had reached (no record read twice or skipped), before the rest
    of it is skipped and counted (data/skipped/shard_unreadable)."""
    retry_backoff: float = 1.0
    """Seconds before the first reopening of a remote shard, doubled at each further one."""


def set_fields(cfg: SourceConfig) -> list[str]:
    """The fields of a `SourceConfig` whose values differ from the schema's defaults, in the
    schema's order (a value the schema fills in is not counted as set)."""
    defaults = SourceConfig()
    names = [f.name for f in dataclasses.fields(SourceConfig)]
    return [n for n in names if getattr(cfg, n) != getattr(defaults, n)]


@dataclass
class SourceDataConfig(DataSectionConfig):
    """A data section that reads any source with data.kind=source (fine-tuning, evaluation)."""

    source: SourceConfig = field(default_factory=lambda: SourceConfig(type="records"))
    """data.kind=source: how to read the data: any type that holds what the command reads
    (records, image_folder, captions, huggingface, webdataset, torchvision, karpathy, ...) with
    its own fields (path, split, image_column, text_columns, label_column, ...; docs/data.md)."""


def training_checks(t: TrainingConfig) -> list[Check]:
    """Value checks of the shared TrainingConfig section (choices are checked by their type)."""
    return [
        (t.learning_rate > 0, "training.learning_rate", "must be > 0"),
        (t.batch_size > 0, "training.batch_size", "must be > 0"),
        (t.num_workers >= 0, "training.num_workers", "must be >= 0"),
        (t.warmup_steps >= 0, "training.warmup_steps", "must be >= 0"),
        (t.adam_weight_decay >= 0, "training.adam_weight_decay", "must be >= 0"),
        (
            all(float(m) > 0 for m in t.lr_multipliers.values()),
            "training.lr_multipliers",
            "every multiplier must be > 0",
        ),
        (
            len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas),
            "training.adam_betas",
            "must be two numbers in [0, 1)",
        ),
        (
            t.lightning.accumulate_grad_batches >= 1,
            "training.lightning.accumulate_grad_batches",
            "must be >= 1",
        ),
        (t.compile in (True, False, "auto"), "training.compile", "must be true, false or auto"),
        (t.upload_retries >= 0, "training.upload_retries", "must be >= 0"),
        (t.upload_backoff >= 0, "training.upload_backoff", "must be >= 0"),
        (t.upload_wait > 0, "training.upload_wait", "must be > 0"),
        (t.process_group_timeout > 0, "training.process_group_timeout", "must be > 0"),
        *run_dir_checks(t),
        *logger_checks(t),
    ]


def run_dir_checks(t: TrainingConfig) -> list[Check]:
    """A run directory on an fsspec URL: a filesystem this machine can open, and nothing that
    needs it to be a local folder."""
    from flava.checkpoints.run_dir import is_url, url_problem

    if not is_url(t.run_dir) or str(t.run_dir).startswith("file://"):
        return []
    problem = url_problem(t.run_dir)
    return [
        (problem is None, "training.run_dir", f"cannot be opened here: {problem}"),
        (
            t.lightning.strategy != "fsdp",
            "training.run_dir",
            "strategy fsdp writes its sharded checkpoints to a local folder: give a local (or "
            "mounted) training.run_dir, or use strategy ddp",
        ),
        (
            "mlflow" not in [str(n) for n in t.loggers]
            or bool(t.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")),
            "training.run_dir",
            "the mlflow logger's default store is a local database in the run directory: set "
            "training.mlflow_tracking_uri",
        ),
    ]


def mlflow_uri(t: TrainingConfig) -> str:
    """Where the mlflow logger writes: training.mlflow_tracking_uri, else MLFLOW_TRACKING_URI,
    else the local database <run_dir>/mlflow.db."""
    local = f"sqlite:///{(Path(t.run_dir) / 'mlflow.db').resolve()}"
    return t.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local


def missing_module(logger: str, t: TrainingConfig) -> str | None:
    """The first module logger `logger` needs that cannot be found (nothing is imported)."""
    packages: dict[str, list[tuple[str, ...]]] = {  # each entry: modules of which any will do
        "tensorboard": [("tensorboard", "tensorboardX")],
        "wandb": [("wandb",)],
        "mlflow": [("mlflow",)],
    }
    needs = packages.get(logger, [])
    if logger == "mlflow" and mlflow_uri(t).split(":")[0].split("+")[0] in MLFLOW_DATABASES:
        needs += [("sqlalchemy",), ("alembic",)]  # not in mlflow-skinny
    for modules in needs:
        if all(importlib.util.find_spec(m) is None for m in modules):
            return modules[0]
    return None


def logger_checks(t: TrainingConfig) -> list[Check]:
    """Checks of training.loggers: csv kept, each once, every package installed."""
    names = [str(name) for name in t.loggers]
    missing = next(((n, m) for n in names if (m := missing_module(n, t)) is not None), None)
    name, module = missing or ("", "")
    lacks = f"{name} is not installed" if module == name else f"{name} needs {module}"
    return [
        (
            "csv" in names,
            "training.loggers",
            "must include csv (metrics.json and curves.png are read from logs/metrics.csv)",
        ),
        (len(set(names)) == len(names), "training.loggers", "must name each logger once"),
        (
            missing is None,
            "training.loggers",
            f"{lacks}; {LOGGER_INSTALLS.get(name)}, or leave {name} out",
        ),
    ]


def existing_file(path: str | None) -> bool:
    """True for no path or a path naming a file (`~` expanded)."""
    return path is None or Path(path).expanduser().is_file()


# ---------------------------------------------------------------------------------------------
# sections every evaluation command (zero_shot, retrieval, linear_probe) has


class ImageDataKind(Choice):
    """Where zero_shot's and linear_probe's labelled images come from."""

    source = "source"
    embedded = "embedded"
    image_folder = "image_folder"
    torchvision = "torchvision"


@dataclass
class EvalDataConfig(SourceDataConfig):
    """Where the images (and captions) come from."""

    kind: ImageDataKind = ImageDataKind.embedded
    """source (data.source: any source type with labelled images), embedded (generated scenes),
    a folder of class folders, or a torchvision dataset. The named kinds are read as sources."""
    name: str | None = None
    """torchvision dataset: cifar10, food101 or rendered_sst2."""
    root: str | None = None
    """Dataset root directory."""
    image_root: str | None = None
    """Retrieval: directory the Karpathy file's filepath/filename are relative to (def. root)."""
    annotations: str | None = None
    """Retrieval: Karpathy JSON (default root/dataset_coco.json or root/dataset_flickr30k.json)."""
    split: str | None = None
    """Evaluation split (default: zero_shot val, retrieval test, linear_probe test); with
    data.kind=source: data.source.split (default: the type's own evaluation split, or all)."""
    size: int | None = None
    """Embedded scenes to generate (default 512), or the first N examples of a dataset (a
    stream is read only that far)."""
    seed: int = 0
    """Seed of the embedded scenes' generator."""
    download: bool = False
    """Let torchvision download the dataset (needs network access)."""


NAMED_KIND_KEYS = {
    "root": "path",
    "name": "key",
    "image_root": "image_root",
    "annotations": "path",
    "split": "split",
    "seed": "seed",
    "download": "download",
}
"""Keys of the named data kinds, each with the data.source field that says it for kind=source."""


@dataclass
class RunOptions:
    """Run directory, device and batching."""

    run_dir: str = "runs/eval"
    """Where metrics.json (and caches) go."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1 ..."""
    batch_size: int = 64
    """Images per embedding batch."""
    num_workers: int = 2
    """Image loading worker processes (linear_probe features)."""
    seed: int = 0
    """Seed of random initialisation (presets) and of sampling."""
    progress: bool = True
    """Show progress bars."""


RENAMED_EVAL_KEYS = {"run.text_max_length": "data.text_max_length"}
"""Old spellings the evaluation commands still read, each with the key it now is."""


def model_checks(m: ModelConfig) -> list[Check]:
    """Value checks of the keys every command's model section has."""
    from flava.model.presets import PRESET_NAMES

    return [
        (m.preset in PRESET_NAMES, "model.preset", f"must be one of {', '.join(PRESET_NAMES)}"),
    ]


def data_section_checks(d: DataSectionConfig, section: str) -> list[Check]:
    """Value checks of the keys every data section has (`section`: datasets or data)."""
    return [
        (d.text_max_length >= 3, f"{section}.text_max_length", "must be >= 3"),
        (
            0 <= d.max_skipped_fraction <= 1,
            f"{section}.max_skipped_fraction",
            "must be in [0, 1]",
        ),
    ]


def prompt_checks(p: PromptConfig, section: str) -> list[Check]:
    """Value checks of class names and templates (`section`: where they are)."""
    sets = ", ".join(TEMPLATE_SETS)
    return [
        (
            existing_file(p.class_names),
            f"{section}.class_names",
            "must be a JSON list file of class names (not found)",
        ),
        (
            p.templates in TEMPLATE_SETS or existing_file(p.templates),
            f"{section}.templates",
            f"must be {sets} or a JSON list file of templates with {{}} (not found)",
        ),
    ]


class EvalCommandConfig(Protocol):
    """What every evaluation command's schema holds (zero_shot, retrieval, linear_probe)."""

    @property
    def run(self) -> RunOptions: ...

    @property
    def model(self) -> ModelConfig: ...

    @property
    def data(self) -> EvalDataConfig: ...


def eval_checks(cfg: EvalCommandConfig) -> list[Check]:
    """Value checks of the sections every evaluation command has."""
    r = cfg.run
    return [
        *model_checks(cfg.model),
        (r.batch_size > 0, "run.batch_size", "must be > 0"),
        (r.num_workers >= 0, "run.num_workers", "must be >= 0"),
        *data_section_checks(cfg.data, "data"),
        (cfg.data.size is None or cfg.data.size > 0, "data.size", "must be > 0"),
        *source_kind_checks(cfg.data),
    ]


def source_kind_checks(d: EvalDataConfig) -> list[Check]:
    """With data.kind=source the named kinds' keys are not read: each set one is refused,
    naming the data.source field that says it."""
    defaults = EvalDataConfig()
    return [
        (
            d.kind != "source" or getattr(d, key) == getattr(defaults, key),
            f"data.{key}",
            f"it is not read with data.kind=source; set data.source.{field} instead",
        )
        for key, field in NAMED_KIND_KEYS.items()
    ]


def fail_eval_checks(cfg: EvalCommandConfig, checks: list[Check]) -> None:
    """Raise for the first failed check; then the run directory (results come at the end)."""
    fail_checks(cfg, checks)
    check_directory(cfg.run.run_dir, "run.run_dir")
