"""Named model presets: `flava_full` (the published shape), the scaling-study sizes, and `tiny`.

Building a preset never downloads anything: presets are shapes only. Pretrained weights are
reached through `from_pretrained` (see `flava.checkpoints`).
"""

from __future__ import annotations

from typing import TypedDict

from flava.model.config import (
    CodebookConfig,
    FlavaConfig,
    ImageEncoderConfig,
    MultimodalEncoderConfig,
    TextEncoderConfig,
)


class _Shape(TypedDict):
    """The width of every encoder of a preset."""

    hidden_size: int
    num_attention_heads: int
    intermediate_size: int


def _scaled(width: int, unimodal_layers: int, multimodal_layers: int) -> FlavaConfig:
    heads = width // 64
    shape = _Shape(hidden_size=width, num_attention_heads=heads, intermediate_size=4 * width)
    return FlavaConfig(
        image=ImageEncoderConfig(num_hidden_layers=unimodal_layers, **shape),
        text=TextEncoderConfig(num_hidden_layers=unimodal_layers, **shape),
        multimodal=MultimodalEncoderConfig(num_hidden_layers=multimodal_layers, **shape),
        projection_dim=width,
    )


def _tiny() -> FlavaConfig:
    shape = _Shape(hidden_size=128, num_attention_heads=4, intermediate_size=512)
    return FlavaConfig(
        image=ImageEncoderConfig(num_hidden_layers=4, image_size=64, patch_size=16, **shape),
        text=TextEncoderConfig(num_hidden_layers=4, max_position_embeddings=128, **shape),
        multimodal=MultimodalEncoderConfig(num_hidden_layers=2, **shape),
        codebook=CodebookConfig(hidden_size=16, num_blocks_per_group=1),
        projection_dim=128,
        # std^2 * width as in flava_full (0.02^2 * 768): sublayer outputs are not drowned by
        # the residual stream at init, so a few hundred steps from scratch are enough.
        initializer_range=0.05,
    )


_PRESETS = {
    "flava_full": lambda: FlavaConfig(),
    "900m": lambda: _scaled(1024, 24, 12),
    "1.8b": lambda: _scaled(1280, 32, 16),
    "2.7b": lambda: _scaled(1408, 40, 20),
    "4.8b": lambda: _scaled(1664, 48, 24),
    "10b": lambda: _scaled(2048, 64, 40),
    "tiny": _tiny,
}

PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def preset(name: str) -> FlavaConfig:
    """A fresh `FlavaConfig` for a named preset."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESET_NAMES)}")
    return _PRESETS[name]().validate()
