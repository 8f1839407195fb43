"""The step a plan sizes: one image-text pair step per GPU (`Workload`), the strategies and
precisions it compares."""

from __future__ import annotations

from dataclasses import dataclass

from flava.model.config import FlavaConfig

GIB = 2**30
STRATEGIES = ("ddp", "fsdp", "fsdp + activation checkpointing")
PRECISIONS = ("32", "bf16-mixed")


@dataclass
class Workload:
    """One pair step per GPU: batch, padded text length, masked patches and tokens per sample."""

    batch_size: int
    text_length: int = 77
    masked_patches: int | None = None  # None: 75 of 196 patches, scaled to the grid
    mlm_probability: float = 0.15

    def patches_masked(self, config: FlavaConfig) -> int:
        """Masked patches per image."""
        n = config.image.grid_size**2
        return self.masked_patches if self.masked_patches is not None else round(75 * n / 196)

    def tokens_masked(self) -> int:
        """Masked text tokens per sample (special tokens excluded)."""
        return round(self.mlm_probability * max(0, self.text_length - 2))


def check_choices(precision: str, strategy: str) -> None:
    """A ValueError for a strategy or precision the plan does not model."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
