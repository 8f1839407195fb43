"""Typed schemas of the evaluation commands (zero_shot, retrieval, linear_probe) and helpers.

Shared sections: `model` (weights through from_pretrained, or a randomly initialised preset),
`data` (which images / captions) and `run` (directory, device, batching). Each command adds
its own section (`zero_shot`, `retrieval`, `probe`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from flava.config import ConfigError
from flava.tasks.finetune_config import fail_checks

log = logging.getLogger("flava")


@dataclass
class EvalModelConfig:
    """Weights through from_pretrained, or a preset built with random weights."""

    preset: str = "tiny"
    """Preset to build (random init, seeded by run.seed) when no weights are given."""
    pretrained_model_key: str | None = None
    """A pretrained key (flava_full), our checkpoint directory or a transformers directory."""


@dataclass
class EvalDataConfig:
    """Where the images (and captions) come from."""

    kind: str = "embedded"
    """embedded; image_folder / torchvision (zero_shot, probe); coco / flickr30k / captions."""
    name: str | None = None
    """torchvision dataset: cifar10, food101 or rendered_sst2."""
    root: str | None = None
    """Dataset root directory."""
    image_root: str | None = None
    """Retrieval: directory the Karpathy file's filepath/filename are relative to (def. root)."""
    annotations: str | None = None
    """Retrieval: Karpathy JSON (default root/dataset_coco.json or root/dataset_flickr30k.json)."""
    split: str | None = None
    """Evaluation split (default: zero_shot val, retrieval test, linear_probe test)."""
    size: int | None = None
    """Embedded scenes to generate (default 512), or the first N examples of a dataset."""
    seed: int = 0
    """Seed of the embedded scenes' generator."""
    download: bool = False
    """Let torchvision download the dataset (needs network access)."""
    max_skipped_fraction: float = 0.1
    """Stop (exit 1, metrics.json written) when more than this fraction of the images or
    captions read were bad (unreadable, truncated, SVG, empty captions, ...); 1 never stops."""


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
    text_max_length: int = 77
    """Tokens per text."""
    seed: int = 0
    """Seed of random initialisation (presets) and of sampling."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class ZeroShotOptions:
    """Class names and prompt templates."""

    class_names: str | None = None
    """JSON list of class names in label order (default: dataset's, ImageNet's when detected)."""
    templates: str | None = None
    """JSON list of templates with {} (default: the dataset's; imagenet80 / imagenet7 named)."""
    topk: list[int] = field(default_factory=lambda: [1, 5])
    """k of the top-k accuracies."""


@dataclass
class ZeroShotRunConfig:
    """`python -m flava.zero_shot`."""

    run: RunOptions = field(default_factory=lambda: RunOptions(run_dir="runs/zero_shot"))
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    zero_shot: ZeroShotOptions = field(default_factory=ZeroShotOptions)


@dataclass
class RetrievalOptions:
    """Recall cut-offs and the embedding cache."""

    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    """k of R@k."""
    cache_dir: str | None = None
    """Embedding cache directory (default <run_dir>/cache); null with use_cache=false: none."""
    use_cache: bool = True
    """Reuse embeddings cached for the same model, dataset and settings."""


@dataclass
class RetrievalRunConfig:
    """`python -m flava.retrieval`."""

    run: RunOptions = field(default_factory=lambda: RunOptions(run_dir="runs/retrieval"))
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)


@dataclass
class ProbeOptions:
    """Features, the L2 sweep and L-BFGS."""

    features: str = "encoder_cls"
    """encoder_cls (final-LayerNorm CLS of the image encoder; the paper's), projection, or
    mean_patch (mean of the final-LayerNorm patch tokens; BEiT's and MAE's probe)."""
    train_split: str = "train"
    """Training split (image_folder subfolder, torchvision / embedded split)."""
    val_split: str | None = "val"
    """Validation split for the L2 sweep; null or absent: hold out val_fraction of train."""
    test_split: str = "test"
    """Split the final accuracy is reported on."""
    val_fraction: float = 0.2
    """Held-out share of train when there is no validation split."""
    test_fraction: float = 0.2
    """Share of a folder without split subfolders (D/<class>/<image>) held out for test."""
    train_size: int = 1024
    """Embedded scenes for training (other datasets: all; see data.size to cap)."""
    val_size: int = 256
    """Embedded scenes for validation."""
    test_size: int = 512
    """Embedded scenes for testing."""
    l2_min: float = 1.0e-6
    """Smallest L2 strength lambda of the sweep (paper: 1e-6)."""
    l2_max: float = 1.0e6
    """Largest lambda (paper: 1e6)."""
    l2_points: int = 13
    """Log-spaced lambdas between l2_min and l2_max (13: one per decade)."""
    max_iter: int = 1000
    """L-BFGS iterations per fit."""
    dtype: str = "float64"
    """Precision of the fit: float64 or float32."""


@dataclass
class LinearProbeRunConfig:
    """`python -m flava.linear_probe`."""

    run: RunOptions = field(default_factory=lambda: RunOptions(run_dir="runs/linear_probe"))
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    probe: ProbeOptions = field(default_factory=ProbeOptions)


def _common_checks(cfg: DictConfig, kinds: tuple[str, ...]) -> list[tuple[bool, str, str]]:
    from flava.model.presets import PRESET_NAMES

    r = cfg.run
    return [
        (cfg.model.preset in PRESET_NAMES, "model.preset", f"one of {', '.join(PRESET_NAMES)}"),
        (cfg.data.kind in kinds, "data.kind", f"must be one of {', '.join(kinds)}"),
        (r.batch_size > 0, "run.batch_size", "must be > 0"),
        (r.num_workers >= 0, "run.num_workers", "must be >= 0"),
        (r.text_max_length >= 3, "run.text_max_length", "must be >= 3"),
        (cfg.data.size is None or cfg.data.size > 0, "data.size", "must be > 0"),
        (
            0 <= cfg.data.max_skipped_fraction <= 1,
            "data.max_skipped_fraction",
            "must be in [0, 1]",
        ),
    ]


def validate_zero_shot(cfg: DictConfig) -> None:
    """Value checks of the zero_shot command."""
    checks = _common_checks(cfg, ("embedded", "image_folder", "torchvision"))
    checks.append((all(k >= 1 for k in cfg.zero_shot.topk), "zero_shot.topk", "k must be >= 1"))
    fail_checks(cfg, checks)


def validate_retrieval(cfg: DictConfig) -> None:
    """Value checks of the retrieval command."""
    from flava.data.scenes import MAX_DISTINCT_SCENES

    checks = _common_checks(cfg, ("embedded", "coco", "flickr30k", "captions"))
    checks.append((all(k >= 1 for k in cfg.retrieval.ks), "retrieval.ks", "k must be >= 1"))
    checks.append(
        (
            cfg.data.kind != "embedded" or (cfg.data.size or 512) <= MAX_DISTINCT_SCENES,
            "data.size",
            f"embedded retrieval sets hold at most {MAX_DISTINCT_SCENES} distinct scenes",
        )
    )
    fail_checks(cfg, checks)


def validate_linear_probe(cfg: DictConfig) -> None:
    """Value checks of the linear_probe command."""
    p = cfg.probe
    checks = _common_checks(cfg, ("embedded", "image_folder", "torchvision"))
    checks += [
        (
            p.features in ("encoder_cls", "projection", "mean_patch"),
            "probe.features",
            "encoder_cls, projection or mean_patch",
        ),
        (0 < p.l2_min <= p.l2_max, "probe.l2_min", "need 0 < l2_min <= l2_max"),
        (p.l2_points >= 1, "probe.l2_points", "must be >= 1"),
        (p.max_iter >= 1, "probe.max_iter", "must be >= 1"),
        (0 < p.val_fraction < 1, "probe.val_fraction", "must be in (0, 1)"),
        (0 < p.test_fraction < 1, "probe.test_fraction", "must be in (0, 1)"),
        (p.dtype in ("float32", "float64"), "probe.dtype", "must be float32 or float64"),
        (min(p.train_size, p.val_size, p.test_size) > 0, "probe.train_size", "sizes must be > 0"),
    ]
    fail_checks(cfg, checks)


# ---------------------------------------------------------------------------------------------
# shared helpers


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"run.device={name!r} is invalid: use auto, cpu, cuda or cuda:N"
        ) from None


def load_flava(mcfg: Any, seed: int = 0) -> Any:
    """FlavaModel from model.pretrained_model_key (any from_pretrained source) or a preset."""
    from flava.model.flava import FlavaModel
    from flava.model.presets import preset

    if mcfg.pretrained_model_key:
        return FlavaModel.from_pretrained(mcfg.pretrained_model_key)
    torch.manual_seed(seed)
    log.info("no weights given: model.preset=%s with random initialisation", mcfg.preset)
    return FlavaModel(preset(mcfg.preset))


def model_tag(mcfg: Any, seed: int = 0) -> str:
    """What identifies the weights: the resolved path (with file times) or preset + seed."""
    key = mcfg.pretrained_model_key
    if not key:
        return f"preset:{mcfg.preset}:seed{seed}"
    path = Path(key).expanduser()
    if path.exists():
        stamps = (
            sorted(
                f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
                for p in path.iterdir()
                if p.is_file()
            )
            if path.is_dir()
            else [str(int(path.stat().st_mtime))]
        )
        return f"{path.resolve()}|{'|'.join(stamps)}"
    return f"key:{key}"


def read_json_list(path: str, what: str) -> list[str]:
    """A JSON list of strings from a file; one-line ConfigError otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what}: {p} not found")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: {p} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ConfigError(f"{what}: {p} must hold a JSON list of strings")
    return data


def check_skipped(cfg: DictConfig, metrics: dict[str, Any], skips: Any, read: int) -> None:
    """Write metrics.json and stop (DataError, exit 1) when too many samples were bad."""
    from flava.data.sources.base import DataError, skip_metrics, too_many_skipped

    limit = cfg.data.max_skipped_fraction
    reason = too_many_skipped(skips.counts, read, limit, "samples")
    if reason is not None:
        save_results(cfg.run.run_dir, cfg, {**metrics, **skip_metrics(skips.counts, read)})
        raise DataError(f"{reason}; fix the data or raise data.max_skipped_fraction")


def save_results(run_dir: str | Path, cfg: DictConfig, metrics: dict[str, Any]) -> Path:
    """config.yaml + metrics.json (sorted keys) in the run directory (no Lightning import)."""
    from flava.config import make_directory, to_yaml

    out = make_directory(run_dir, "run.run_dir")
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return out


def print_table(title: str, metrics: dict[str, Any]) -> str:
    """A two-column result table (numbers as percentages where they are fractions)."""
    width = max([len(k) for k in metrics] + [30])
    lines = [f"\n{title}", f"{'metric':<{width}}  {'value':>10}"]
    for key, value in metrics.items():
        if isinstance(value, float):
            text = f"{value:10.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:10.3g}"
            lines.append(f"{key:<{width}}  {text}")
        elif isinstance(value, bool):
            lines.append(f"{key:<{width}}  {'yes' if value else 'no':>10}")
        elif isinstance(value, int):
            lines.append(f"{key:<{width}}  {value:10d}")
    text = "\n".join(lines)
    print(text)
    return text
