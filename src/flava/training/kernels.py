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
    """Which attention kernel the run uses (`training.attention_kernel`), said in the log and kept
    in the checkpoint, so that a resumed run computes as it started.

    `auto` measures in half precision only: SDPA against the explicit path on one layer's shape,
    the faster kept (rank 0's choice on every process; within 10% the default stays). In fp32
    (and with `training.lightning.deterministic`) it keeps the default, SDPA, without measuring:
    a timing must not make two runs of one seed compute differently."""

    TIE = 0.10

    def __init__(self, setting: str = "auto", deterministic: bool = False) -> None:
        self.setting, self.deterministic = setting, deterministic
        self.chosen: dict[str, str] = {}  # "cpu/bfloat16" -> kernel, saved in checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"chosen": dict(self.chosen)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.chosen = dict(state_dict.get("chosen", {}))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shape = attention_shape(pl_module)
        if shape is None:
            return
        device, dtype = pl_module.device, compute_dtype(trainer.precision)
        key = f"{device.type}/{str(dtype).removeprefix('torch.')}"
        how = self._choose(trainer, device, dtype, shape, key)
        attention.set_kernel(device.type, dtype, self.chosen[key])
        log.info("attention kernel on %s: %s (%s)", key.replace("/", " in "), self.chosen[key], how)

    def _choose(
        self,
        trainer: L.Trainer,
        device: torch.device,
        dtype: torch.dtype,
        shape: tuple[int, int, int],
        key: str,
    ) -> str:
        """Fill self.chosen[key]; returns how it was chosen, for the log."""
        if key in self.chosen:
            return "as the checkpoint's run chose"
        if self.setting != "auto":
            self.chosen[key] = self.setting
            return "training.attention_kernel"
        default = attention.default_kernel(device.type, dtype)
        if dtype == torch.float32 or self.deterministic:
            self.chosen[key] = default
            return "fp32 or deterministic: not measured"
        heads, tokens, head_dim = shape
        seconds = attention.choose(device, dtype, MEASURED_BATCH, heads, tokens, head_dim)
        fastest = min(seconds, key=seconds.__getitem__)
        if seconds[default] <= (1 + self.TIE) * seconds[fastest]:
            fastest = default
        self.chosen[key] = trainer.strategy.broadcast(fastest)
        timing = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items())
        shape_text = f"batch {MEASURED_BATCH} x {tokens} tokens"
        return f"measured, one layer's forward + backward at {shape_text}: {timing}"


def kernel_callbacks(setting: str, deterministic: bool) -> list[Any]:
    """The callbacks every training command adds."""
    return [AttentionKernel(setting, deterministic)]
