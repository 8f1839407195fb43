"""Kernels chosen by measurement at the start of a run, on the run's own device and dtype."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from flava.model import attention
from flava.model.encoders import ImageEncoder
from flava.model.transformer import Attention
from flava.training.precision import low_precision_kind

log = logging.getLogger("flava")

MEASURED_BATCH = 8
"""Images per measurement: the shape of one layer's attention at a small batch."""


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matrix products run in under a Lightning precision setting."""
    kind = low_precision_kind(str(precision))
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind or "", torch.float32)


def attention_shape(module: torch.nn.Module) -> tuple[int, int, int] | None:
    """(heads, tokens, head dim) of the model's image attention (text-only models: 128 tokens),
    None for a model without attention."""
    layer = next((m for m in module.modules() if isinstance(m, Attention)), None)
    if layer is None:
        return None
    image = next((m for m in module.modules() if isinstance(m, ImageEncoder)), None)
    tokens = image.config.grid_size**2 + 1 if image is not None else 128
    return layer.num_heads, tokens, layer.head_dim


class AttentionKernel(L.Callback):
    """At fit start, time SDPA against the explicit path on one layer's attention shape, keep
    the faster for this run's device and dtype (the same on every process: rank 0's choice),
    and say which in the log."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shape = attention_shape(pl_module)
        if shape is None:
            return
        device, dtype = pl_module.device, compute_dtype(trainer.precision)
        heads, tokens, head_dim = shape
        seconds = attention.choose(device, dtype, MEASURED_BATCH, heads, tokens, head_dim)
        chosen = trainer.strategy.broadcast(attention.kernel(device.type, dtype))
        attention.set_kernel(device.type, dtype, chosen)
        timing = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items())
        log.info(
            "attention kernel on %s in %s: %s (one layer's forward + backward, batch %d x %d "
            "tokens: %s)",
            device.type,
            str(dtype).removeprefix("torch."),
            chosen,
            MEASURED_BATCH,
            tokens,
            timing,
        )


def kernel_callbacks() -> list[Any]:
    """The callbacks every training command adds."""
    return [AttentionKernel()]
