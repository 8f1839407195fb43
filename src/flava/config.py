"""Run configuration: typed schema <- YAML file <- command-line dotlist.

`load_config(argv)` takes the arguments users of the original release type:
`config=flava/configs/pretraining/debug.yaml training.lightning.max_steps=1000`. Unknown keys,
wrong types and bad values fail with one line naming the key and what is allowed
(`ConfigError`, exit status 2 from the entry points).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key or file and a hint."""


def check_directory(path: str | Path, key: str) -> None:
    """Fail with one line, before any work, if a file stands where directory `path` would go."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ConfigError(
                    f"{key}={str(path)!r}: {candidate} is a file, not a directory; "
                    "choose another path"
                )
            return


def make_directory(path: str | Path, key: str) -> Path:
    """Create the directory `path` (config key `key`), or fail with one line saying why."""
    check_directory(path, key)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{key}={str(path)!r}: cannot create it ({exc.strerror})") from None
    return Path(path)


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
"""Every accepted value of training.lightning.precision (the one list the config check uses)."""


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
    precision: str = "32"
    """32, bf16-mixed, 16-mixed, bf16-true, 16-true, 64 or auto (bf16-mixed on GPUs with bf16,
    16-mixed on older GPUs, 32 on CPUs without native bf16; the choice is saved in config.yaml).
    bf16 / fp16 on a CPU without native support stop before any work (LayerNorm, softmax and
    losses stay fp32 under mixed precision)."""
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
class EvaluationConfig:
    """Zero-shot evaluation callback (classification by prompts, retrieval with every caption)."""

    enabled: bool = True
    """Run zero-shot evaluation before and after training."""
    every_n_steps: int | None = None
    """Also evaluate every N steps (None: only before and after)."""
    num_samples: int = 256
    """Validation images (with all their captions) to evaluate on."""
    batch_size: int = 64
    """Embedding batch size."""
    class_names: str | None = None
    """Zero-shot on labelled datasets.image.val entries: JSON list of class names in label order
    (default: the folder names, "_" read as spaces, or the dataset's label names)."""
    templates: str | None = None
    """Zero-shot prompt templates: a JSON list file, imagenet80 or imagenet7 (default: the
    scenes' own for embedded data, "a photo of a {}." otherwise)."""


@dataclass
class TrainingConfig:
    """Optimisation, run directory, checkpoints and Lightning."""

    lightning: LightningConfig = field(default_factory=LightningConfig)
    lightning_checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    lightning_load_from_checkpoint: str | None = None
    """Resume from this Lightning checkpoint (model, optimiser, scheduler, step, data position)."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    run_dir: str = "runs/flava"
    """Run directory: config.yaml, metrics.json, logs, checkpoints, curves.png."""
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
    """AdamW weight decay (not applied to biases, norms, embeddings of tokens/positions)."""
    warmup_steps: int = 10000
    """Linear warm-up steps."""
    lr_schedule: str = "cosine"
    """Decay after warm-up: cosine, linear or constant."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak."""
    lr_decay_steps: int | None = None
    """Length of the schedule in steps (None: training.lightning.max_steps)."""
    nonfinite_patience: int = 20
    """Stop (with a checkpoint) after this many optimiser steps in a row with non-finite values."""
    compile: bool = False
    """torch.compile each transformer layer (after sharding under fsdp; with DDP alike)."""


@dataclass
class LossConfig:
    """Objective weights (0 switches an objective off) and ITM negatives."""

    mim_weight: float = 1.0
    mlm_weight: float = 1.0
    mmm_image_weight: float = 1.0
    mmm_text_weight: float = 1.0
    itm_weight: float = 1.0
    global_contrastive_weight: float = 1.0
    itm_negative_probability: float = 0.5
    """Fraction of pairs whose caption is swapped for another caption of the batch."""


@dataclass
class ModelConfig:
    """Which model to build and how to get MIM targets."""

    preset: str = "flava_full"
    """flava_full, 900m, 1.8b, 2.7b, 4.8b, 10b or tiny."""
    pretrained_model_key: str | None = None
    """Start from weights: a pretrained key (flava_full), our checkpoint or a transformers dir."""
    activation_checkpointing: bool = False
    """Non-re-entrant activation checkpointing in every encoder."""
    mim_target: str = "auto"
    """dalle, kmeans or auto (dalle when codebook weights are given, else kmeans)."""
    codebook: str | None = None
    """DALL-E codebook weights: a pretrained key, a directory or OpenAI's encoder.pkl."""
    kmeans_codes: int = 256
    """k-means codebook size (used when mim_target is kmeans)."""
    kmeans_images: int = 512
    """Training images used to fit the k-means codebook."""
    losses: LossConfig = field(default_factory=LossConfig)


@dataclass
class SourceConfig:
    """One dataset. `type: embedded` is the built-in generated scenes (no download)."""

    type: str = "embedded"
    """embedded, huggingface, webdataset, image_folder, captions, records or text_files."""
    key: str | None = None
    """Hugging Face dataset key (type huggingface)."""
    subset: str | None = None
    """Hugging Face subset / configuration name."""
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
    or a save_to_disk dataset."""
    shards: list[str] = field(default_factory=list)
    """webdataset shards: files, folders of *.tar, {000000..000009} patterns, globs, URLs."""
    captions_file: str | None = None
    """captions: JSONL or CSV file under path (default: captions.jsonl / captions.csv)."""
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


@dataclass
class KindConfig:
    """Datasets of one kind for training and validation."""

    train: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    val: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(size=512, seed=0)])


@dataclass
class DatasetsConfig:
    """Data: which kinds, how they mix per step, text and image processing."""

    selected: list[str] = field(default_factory=lambda: ["image", "text", "vl"])
    """Kinds in use: image, text, vl (image-text pairs)."""
    sampling: str = "probability"
    """probability (each step draws its kind) or round_robin."""
    probabilities: dict[str, float] = field(
        default_factory=lambda: {"vl": 0.70, "image": 0.15, "text": 0.15}
    )
    """Per-step kind probabilities (the paper's: pairs 0.70, images 0.15, text 0.15)."""
    image: KindConfig = field(default_factory=KindConfig)
    text: KindConfig = field(default_factory=KindConfig)
    vl: KindConfig = field(default_factory=KindConfig)
    text_max_length: int = 77
    """Tokens per text, [CLS] and [SEP] included."""
    mlm_probability: float = 0.15
    """Fraction of text tokens masked."""
    whole_word_masking: bool = False
    """Mask all pieces of a word together."""
    image_mask_patches: int | None = None
    """Patches masked per image (None: 75/196 of the grid)."""
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    """Random resized crop scale range."""
    max_skipped_fraction: float = 0.1
    """Stop the run (with a checkpoint) when more than this fraction of the training samples
    read so far were skipped as bad (unreadable images, empty texts, ...); 1 never stops."""


@dataclass
class RunConfig:
    """The whole run."""

    training: TrainingConfig = field(default_factory=TrainingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)


def _config_path(text: str) -> Path:
    """A config path as typed: a file, or a name relative to the shipped configs."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    shipped = resources.files("flava") / "configs"
    for prefix in ("flava/configs/", "configs/", "src/flava/configs/", ""):
        if text.startswith(prefix):
            rel = text[len(prefix) :]
            for candidate in (rel, rel + ".yaml"):
                item = shipped.joinpath(candidate)
                if item.is_file():
                    return Path(str(item))
    raise ConfigError(
        f"config file {text!r} not found; give a path or a shipped name such as "
        f"pretraining/demo.yaml (shipped: {', '.join(shipped_configs())})"
    )


def shipped_configs() -> list[str]:
    """Names of the configs shipped inside the package."""
    root = resources.files("flava") / "configs"
    names = []
    for group in root.iterdir():
        if group.is_dir():
            names += [f"{group.name}/{f.name}" for f in group.iterdir() if f.name.endswith(".yaml")]
    return sorted(names)


def _one_line(exc: OmegaConfBaseException) -> str:
    msg = str(exc).strip().splitlines()[0]
    key = getattr(exc, "full_key", None)
    return f"{key}: {msg}" if key and key not in msg else msg


def load_config(argv: list[str], schema: type = RunConfig) -> DictConfig:
    """Merge schema <- YAML (config=...) <- dotlist overrides; validate; return the config."""
    file_args = [a for a in argv if a.startswith("config=")]
    overrides = [a for a in argv if not a.startswith("config=")]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"argument {item!r} is not key=value; e.g. training.lightning.max_steps=1000"
            )
    merged = OmegaConf.structured(schema)
    try:
        for arg in file_args:
            path = _config_path(arg.split("=", 1)[1])
            try:
                data = OmegaConf.load(path)
            except Exception as exc:  # yaml.YAMLError and friends
                first = str(exc).strip().splitlines()[0]
                raise ConfigError(f"{path}: not valid YAML ({first})") from None
            data = _legacy(data)
            merged = OmegaConf.merge(merged, data)
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{_one_line(exc)} (see --help for the keys)") from None
    validate(merged)
    return merged


def _legacy(data: Any) -> Any:
    """Drop keys of the original release's configs that have no meaning here."""
    if isinstance(data, DictConfig) and "datasets" in data and "_delete_" in data.datasets:
        data.datasets.pop("_delete_")
    return data


def training_checks(t: DictConfig) -> list[tuple[bool, str, str]]:
    """Value checks of the shared TrainingConfig section."""
    return [
        (t.learning_rate > 0, "training.learning_rate", "must be > 0"),
        (t.batch_size > 0, "training.batch_size", "must be > 0"),
        (t.num_workers >= 0, "training.num_workers", "must be >= 0"),
        (t.warmup_steps >= 0, "training.warmup_steps", "must be >= 0"),
        (t.adam_weight_decay >= 0, "training.adam_weight_decay", "must be >= 0"),
        (
            t.lr_schedule in ("cosine", "linear", "constant"),
            "training.lr_schedule",
            "must be cosine, linear or constant",
        ),
        (
            t.lightning.precision in PRECISIONS,
            "training.lightning.precision",
            f"must be one of {', '.join(PRECISIONS)}",
        ),
        (
            t.lightning.accumulate_grad_batches >= 1,
            "training.lightning.accumulate_grad_batches",
            "must be >= 1",
        ),
    ]


def evaluation_checks(
    ev: DictConfig, d: DictConfig, max_scenes: int
) -> list[tuple[bool, str, str]]:
    """Value checks of training.evaluation (the scene cap applies to embedded vl validation)."""
    embedded = any(s.type == "embedded" for s in d.vl.val)
    most = max_scenes if embedded else sys.maxsize
    named = ("imagenet80", "imagenet7")
    return [
        (
            1 <= ev.num_samples <= most,
            "training.evaluation.num_samples",
            f"must be 1 to {max_scenes} (distinct held-out scenes)" if embedded else "must be >= 1",
        ),
        (ev.batch_size >= 1, "training.evaluation.batch_size", "must be >= 1"),
        (
            ev.every_n_steps is None or ev.every_n_steps >= 1,
            "training.evaluation.every_n_steps",
            "must be >= 1 or null",
        ),
        (
            ev.class_names is None or Path(ev.class_names).expanduser().is_file(),
            "training.evaluation.class_names",
            "must be a JSON list file of class names (not found)",
        ),
        (
            ev.templates is None
            or ev.templates in named
            or Path(ev.templates).expanduser().is_file(),
            "training.evaluation.templates",
            "must be imagenet80, imagenet7 or a JSON list file of templates with {} (not found)",
        ),
    ]


def validate(cfg: DictConfig) -> None:
    """Value checks that types alone cannot express."""
    from flava.data.scenes import MAX_DISTINCT_SCENES
    from flava.model.presets import PRESET_NAMES

    t, m, d = cfg.training, cfg.model, cfg.datasets
    checks = training_checks(t) + [
        (
            len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas),
            "training.adam_betas",
            "must be two numbers in [0, 1)",
        ),
        (m.preset in PRESET_NAMES, "model.preset", f"must be one of {', '.join(PRESET_NAMES)}"),
        (
            m.mim_target in ("auto", "dalle", "kmeans"),
            "model.mim_target",
            "must be auto, dalle or kmeans",
        ),
        (m.kmeans_codes >= 2, "model.kmeans_codes", "must be >= 2"),
        *evaluation_checks(t.evaluation, d, MAX_DISTINCT_SCENES),
        (
            0 <= m.losses.itm_negative_probability < 1,
            "model.losses.itm_negative_probability",
            "must be in [0, 1)",
        ),
        (0 < d.mlm_probability < 1, "datasets.mlm_probability", "must be in (0, 1)"),
        (d.text_max_length >= 3, "datasets.text_max_length", "must be >= 3"),
        (
            0 <= d.max_skipped_fraction <= 1,
            "datasets.max_skipped_fraction",
            "must be in [0, 1]",
        ),
        (
            d.sampling in ("probability", "round_robin"),
            "datasets.sampling",
            "must be probability or round_robin",
        ),
        (
            len(d.selected) > 0 and set(d.selected) <= {"image", "text", "vl"},
            "datasets.selected",
            "must be a non-empty subset of [image, text, vl]",
        ),
    ]
    for name in (
        "mim_weight",
        "mlm_weight",
        "mmm_image_weight",
        "mmm_text_weight",
        "itm_weight",
        "global_contrastive_weight",
    ):
        checks.append((m.losses[name] >= 0, f"model.losses.{name}", "must be >= 0"))
    if d.sampling == "probability":
        probs = {k: d.probabilities.get(k, 0.0) for k in d.selected}
        checks.append(
            (
                all(p >= 0 for p in probs.values()) and sum(probs.values()) > 0,
                "datasets.probabilities",
                f"need a non-negative probability for each selected kind, got {probs}",
            )
        )
    for ok, key, hint in checks:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise ConfigError(f"{key}={value!r} is invalid: {hint}")
    check_directory(t.run_dir, "training.run_dir")


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (what the run directory keeps)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def as_dataclass(cfg: DictConfig) -> RunConfig:
    """The config as typed dataclass objects."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def describe(schema: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per key with its type and default (used for --help)."""
    lines = []
    for f in dataclasses.fields(schema):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) or (
            isinstance(f.type, str) and f.type.endswith("Config") and f.type in globals()
        ):
            sub = globals()[f.type] if isinstance(f.type, str) else f.type
            lines += describe(sub, name + ".")
        else:
            lines.append(f"  {name}: {f.type}")
    return lines


def cli_main(
    argv: list[str] | None,
    doc: str | None,
    help_lines: Callable[[], list[str]],
    load: Callable[[list[str]], Any],
    run: Callable[[Any], object],
    stop_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Body shared by the entry points: --help, logging, and one-line errors.

    Exit status 2 for a bad configuration or unreachable data/weights, 1 for a run that
    stopped early (`stop_errors`), 0 otherwise.
    """
    from flava.checkpoints.io import CheckpointError

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(doc)
        print("\n".join(help_lines()))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(load(argv))
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except stop_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
