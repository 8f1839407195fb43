"""FLAVA: a foundational language-and-vision alignment model (Singh et al., CVPR 2022)."""

from typing import TYPE_CHECKING

from flava.model import (
    PRESET_NAMES,
    FlavaConfig,
    FlavaForPreTraining,
    FlavaModel,
    preset,
)
from flava.model.codebook import ImageCodebook

if TYPE_CHECKING:
    from flava.checkpoints.loading import from_pretrained, save_pretrained

__all__ = [
    "PRESET_NAMES",
    "FlavaConfig",
    "FlavaForPreTraining",
    "FlavaModel",
    "ImageCodebook",
    "from_pretrained",
    "image_transform",
    "load_tokenizer",
    "preset",
    "save_pretrained",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Loading, the tokenizer and transforms import on first use (safetensors, torchvision,
    # tokenizers): `import flava` stays light.
    if name in ("from_pretrained", "save_pretrained"):
        from flava.checkpoints import loading

        return getattr(loading, name)
    if name == "load_tokenizer":
        from flava.data.tokenizer import load_tokenizer

        return load_tokenizer
    if name == "image_transform":
        from flava.data.transforms import image_transform

        return image_transform
    raise AttributeError(f"module 'flava' has no attribute {name!r}")
