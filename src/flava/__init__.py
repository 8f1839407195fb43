"""FLAVA: a foundational language-and-vision alignment model (Singh et al., CVPR 2022)."""

# Importing the checkpoints installs the models' save_pretrained / from_pretrained (the model
# package holds no loading code); every `flava.*` import runs this file first.
from flava import checkpoints  # noqa: F401
from flava.model import (
    PRESET_NAMES,
    FlavaConfig,
    FlavaForPreTraining,
    FlavaModel,
    preset,
)
from flava.model.codebook import ImageCodebook

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
    # The tokenizer and transforms import on first use (torchvision, tokenizers).
    if name == "load_tokenizer":
        from flava.data.tokenizer import load_tokenizer

        return load_tokenizer
    if name == "image_transform":
        from flava.data.transforms import image_transform

        return image_transform
    raise AttributeError(f"module 'flava' has no attribute {name!r}")
