"""Typed schema of `python -m flava.zero_shot`: class names, templates, top-k; its checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from flava.config.common import (
    EvalDataConfig,
    EvalModelConfig,
    RunOptions,
    eval_checks,
    fail_eval_checks,
)


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


def validate_zero_shot(cfg: DictConfig) -> None:
    """Value checks of the zero_shot command."""
    checks = eval_checks(cfg)
    checks.append((all(k >= 1 for k in cfg.zero_shot.topk), "zero_shot.topk", "k must be >= 1"))
    fail_eval_checks(cfg, checks)
