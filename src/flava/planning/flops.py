"""FLOPs count matrix products (2 per multiply-add) as `torch.utils.flop_counter.FlopCounterMode`
does: backward = 2x forward for linear layers, 2.5x for attention (flash-style recompute), the
codebook forward only. Compute time = FLOPs / (MFU x peak).
"""

from __future__ import annotations

from typing import Any

from flava.model.codebook import DOWNSAMPLE
from flava.model.config import EncoderConfig, FlavaConfig
from flava.planning.parameters import codebook_convs
from flava.planning.workload import Workload


def encoder_passes(config: FlavaConfig, w: Workload) -> list[tuple[str, EncoderConfig, int]]:
    """(name, encoder config, sequence length) of every encoder pass of a pair step."""
    n_img = config.image.grid_size**2 + 1
    return [
        ("image", config.image, n_img),
        ("image_masked", config.image, n_img),
        ("text", config.text, w.text_length),
        ("text_masked", config.text, w.text_length),
        ("multimodal", config.multimodal, 1 + n_img + w.text_length),
    ]


def layer_stack_flops(c: EncoderConfig, length: int, batch: int = 1) -> dict[str, float]:
    """Forward FLOPs of an encoder's layers on `batch` sequences of `length` tokens, by part."""
    d, f, tokens = c.hidden_size, c.intermediate_size, batch * length
    return {
        "linear": c.num_hidden_layers * 2 * tokens * (4 * d * d + 2 * d * f),
        "attention": c.num_hidden_layers * 4 * batch * length * length * d,
    }


def encoder_forward_flops(c: EncoderConfig, length: int, batch: int = 1) -> float:
    """Forward FLOPs of an encoder's layers on `batch` sequences of `length` tokens."""
    return sum(layer_stack_flops(c, length, batch).values())


def step_flops(config: FlavaConfig, w: Workload) -> dict[str, float]:
    """FLOPs of one pair step per GPU (FlopCounterMode conventions), by part."""
    b = w.batch_size
    i, t, m = config.image, config.text, config.multimodal
    di, dt, dm, p = i.hidden_size, t.hidden_size, m.hidden_size, config.projection_dim
    fwd = {"linear": 0.0, "attention": 0.0}
    for _, c, n in encoder_passes(config, w):
        for part, flops in layer_stack_flops(c, n, b).items():
            fwd[part] += flops
    n_img = i.grid_size**2
    patch = 2 * 2 * b * n_img * i.num_channels * i.patch_size**2 * di  # two image passes
    mi, mt = b * w.patches_masked(config), b * w.tokens_masked()
    other = 2 * b * (di + dt) * p  # contrastive projections
    other += 2 * b * (1 + n_img) * di * dm + 2 * b * w.text_length * dt * dm  # to-mm projections
    other += 2 * b * (dm * dm + 2 * dm)  # ITM
    other += 2 * mi * (dm * dm + dm * i.vocab_size) + 2 * mt * (dm * dm + dm * t.vocab_size)
    other += 2 * 2 * b * b * p  # contrastive logits, both directions
    side = DOWNSAMPLE * i.grid_size
    codebook = sum(
        2 * b * a * o * k * k * (side // s) ** 2 for a, o, k, s in codebook_convs(config.codebook)
    )
    forward = fwd["linear"] + fwd["attention"] + patch + other
    backward = 2 * (fwd["linear"] + other) + 2.5 * fwd["attention"] + patch
    recompute = fwd["linear"] + fwd["attention"]  # activation checkpointing: layers again
    return {
        "forward": forward,
        "backward": backward,
        "codebook_forward": codebook,
        "total": forward + backward + codebook,
        "attention_forward": fwd["attention"],
        "recompute_with_checkpointing": recompute,
    }


def flop_counter(display: bool = False) -> Any:
    """FlopCounterMode that also counts PyTorch's CPU flash attention (as the CUDA kernels)."""
    import torch
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    def forward(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return sdpa_flop_count(q, k, v)

    def backward(
        g: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any
    ) -> Any:
        return sdpa_backward_flop_count(g, q, k, v)

    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }
    return FlopCounterMode(display=display, custom_mapping=mapping)
