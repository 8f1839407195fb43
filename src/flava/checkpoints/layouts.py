"""The one vocabulary of checkpoint layouts: `Layout`, and the table of how users spell them.

Every function that tells, reads or writes a layout speaks `Layout` (`loading.config_layout`,
`loading.directory_layout`, `init_from.detect_layout`, `flava.convert`); the user-facing
spellings (`model.init_from`'s `layout:`, `flava.convert --to / --from`) are mapped onto it at
those edges, here and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum


class Layout(StrEnum):
    """A checkpoint layout (its value: how `flava.convert` prints it)."""

    vit = "vit"
    """One transformers encoder (ViTModel, DINO's `facebook/dino-vitb16`, FlavaImageModel,
    FlavaTextModel)."""
    timm = "timm"
    """timm's VisionTransformer (`timm/vit_base_patch16_224.dino`)."""
    transformers = "transformers"
    """transformers' FLAVA: FlavaModel, FlavaForPreTraining or FlavaImageCodebook (which one:
    config.json's `model_type` / `architectures`)."""
    flava = "flava"
    """Ours: `config.json` ({"flava_format": 1, ...}) + `model.safetensors` (`save_pretrained`,
    a run's `model/`, a Lightning checkpoint's state)."""
    torchmultimodal = "torchmultimodal"
    """The original release (TorchMultimodal's FLAVAForPreTraining / FLAVAModel .pt, its
    examples' Lightning .ckpt)."""
    openai = "openai"
    """OpenAI's DALL-E `encoder.pkl` (an image codebook)."""
    training = "training"
    """One of our pretraining checkpoints (`<run_dir>/checkpoints/*.ckpt`, sharded or one file)."""
    onnx = "onnx"
    """The image and text encoders with their projections as ONNX graphs (`image_encoder.onnx`,
    `text_encoder.onnx`, `onnx.json`: `flava.checkpoints.onnx`); written, never read back."""


INIT_FROM_SPELLINGS: dict[str, Layout] = {
    "vit": Layout.vit,
    "timm": Layout.timm,
    "flava_hf": Layout.transformers,
    "flava": Layout.flava,
    "torchmultimodal": Layout.torchmultimodal,
}
"""`model.init_from`'s `layout:` values (config `InitLayout`) -> Layout, in their listed order."""
CONVERT_SPELLINGS: dict[str, Layout] = {
    "flava": Layout.flava,
    "transformers": Layout.transformers,
    "ckpt": Layout.training,
    "torchmultimodal": Layout.torchmultimodal,
    "onnx": Layout.onnx,
}
"""`flava.convert --to` (and `--from`) values -> Layout, in their listed order."""


def from_init_spelling(text: str) -> Layout | None:
    """The Layout a `model.init_from` `layout:` value names; None for an unknown one."""
    return INIT_FROM_SPELLINGS.get(str(text))


def init_spelling(layout: Layout) -> str:
    """How `model.init_from` (its reports and errors) spells `layout`."""
    return next((k for k, v in INIT_FROM_SPELLINGS.items() if v is layout), str(layout))


def convert_spelling(layout: Layout) -> str:
    """How `flava.convert --to` spells `layout`."""
    return next((k for k, v in CONVERT_SPELLINGS.items() if v is layout), str(layout))
