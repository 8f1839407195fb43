"""Typed schema of `python -m flava.linear_probe`: features, the L2 sweep, L-BFGS; its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from flava.config.checks import Choice
from flava.config.common import (
    RENAMED_EVAL_KEYS,
    EvalDataConfig,
    ModelConfig,
    RunOptions,
    eval_checks,
    fail_eval_checks,
)


class ProbeFeatures(Choice):
    """Which image features the linear probe reads."""

    encoder_cls = "encoder_cls"
    projection = "projection"
    mean_patch = "mean_patch"


class FitDtype(Choice):
    """Precision of the linear probe's fit."""

    float64 = "float64"
    float32 = "float32"


@dataclass
class ProbeOptions:
    """Features, the L2 sweep and L-BFGS."""

    features: ProbeFeatures = ProbeFeatures.encoder_cls
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
    dtype: FitDtype = FitDtype.float64
    """Precision of the fit."""


@dataclass
class LinearProbeRunConfig:
    """`python -m flava.linear_probe`."""

    run: RunOptions = field(default_factory=lambda: RunOptions(run_dir="runs/linear_probe"))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    renamed_keys: ClassVar[dict[str, str]] = RENAMED_EVAL_KEYS
    """Old spellings still read (each moved to its new key, with a warning)."""


def validate_linear_probe(cfg: LinearProbeRunConfig) -> None:
    """Value checks of the linear_probe command."""
    p = cfg.probe
    checks = eval_checks(cfg)
    checks += [
        (0 < p.l2_min <= p.l2_max, "probe.l2_min", "need 0 < l2_min <= l2_max"),
        (p.l2_points >= 1, "probe.l2_points", "must be >= 1"),
        (p.max_iter >= 1, "probe.max_iter", "must be >= 1"),
        (0 < p.val_fraction < 1, "probe.val_fraction", "must be in (0, 1)"),
        (0 < p.test_fraction < 1, "probe.test_fraction", "must be in (0, 1)"),
        (min(p.train_size, p.val_size, p.test_size) > 0, "probe.train_size", "sizes must be > 0"),
    ]
    fail_eval_checks(cfg, checks)
