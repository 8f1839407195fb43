"""FLAVA: a foundational language-and-vision alignment model (Singh et al., CVPR 2022)."""

from flava.model import (
    PRESET_NAMES,
    FlavaConfig,
    FlavaForPreTraining,
    FlavaModel,
    preset,
)

__all__ = [
    "PRESET_NAMES",
    "FlavaConfig",
    "FlavaForPreTraining",
    "FlavaModel",
    "ImageCodebook",
    "image_transform",
    "load_tokenizer",
    "preset",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The codebook, tokenizer and transforms import on first use (torchvision, tokenizers).
    if name == "ImageCodebook":
        from flava.model.codebook import ImageCodebook

        return ImageCodebook
    if name == "load_tokenizer":
        from flava.data.tokenizer import load_tokenizer

        return load_tokenizer
    if name == "image_transform":
        from flava.data.transforms import image_transform

        return image_transform
    raise AttributeError(f"module 'flava' has no attribute {name!r}")
