"""nn.Modules only: transformer, encoders, heads, codebook and presets (no data, no Lightning)."""

from flava.model.classifier import FlavaClassifier
from flava.model.config import (
    CodebookConfig,
    EncoderConfig,
    FlavaConfig,
    ImageEncoderConfig,
    MultimodalEncoderConfig,
    TextEncoderConfig,
)
from flava.model.flava import FlavaForPreTraining, FlavaModel, FlavaOutput
from flava.model.presets import PRESET_NAMES, preset

__all__ = [
    "PRESET_NAMES",
    "CodebookConfig",
    "EncoderConfig",
    "FlavaClassifier",
    "FlavaConfig",
    "FlavaForPreTraining",
    "FlavaModel",
    "FlavaOutput",
    "ImageEncoderConfig",
    "MultimodalEncoderConfig",
    "TextEncoderConfig",
    "preset",
]
