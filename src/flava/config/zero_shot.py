"""Typed schema of `python -m flava.zero_shot`: class names, templates, top-k; its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from flava.config.common import (
    RENAMED_EVAL_KEYS,
    EvalDataConfig,
    ModelConfig,
    PromptConfig,
    RunOptions,
    eval_checks,
    fail_eval_checks,
    prompt_checks,
)


@dataclass
class ZeroShotOptions(PromptConfig):
    """Class names, prompt templates and top-k."""

    topk: list[int] = field(default_factory=lambda: [1, 5])
    """k of the top-k accuracies."""


@dataclass
class ZeroShotRunConfig:
    """`python -m flava.zero_shot`."""

    run: RunOptions = field(default_factory=lambda: RunOptions(run_dir="runs/zero_shot"))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    zero_shot: ZeroShotOptions = field(default_factory=ZeroShotOptions)
    renamed_keys: ClassVar[dict[str, str]] = RENAMED_EVAL_KEYS
    """Old spellings still read (each moved to its new key, with a warning)."""


def validate_zero_shot(cfg: ZeroShotRunConfig) -> None:
    """Value checks of the zero_shot command."""
    checks = eval_checks(cfg)
    checks += prompt_checks(cfg.zero_shot, "zero_shot")
    checks.append((all(k >= 1 for k in cfg.zero_shot.topk), "zero_shot.topk", "k must be >= 1"))
    fail_eval_checks(cfg, checks)
