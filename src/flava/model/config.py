"""Typed model configuration: one dataclass per part, nested in `FlavaConfig` (paper section 3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EncoderConfig:
    """Shape of one pre-LayerNorm transformer encoder."""

    hidden_size: int = 768
    """Width of the hidden states."""
    num_hidden_layers: int = 12
    """Number of transformer layers."""
    num_attention_heads: int = 12
    """Number of attention heads (must divide hidden_size)."""
    intermediate_size: int = 3072
    """Width of the MLP inside each layer."""
    hidden_act: str = "gelu"
    """MLP activation: gelu (exact erf), gelu_tanh, relu or quick_gelu."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon."""
    hidden_dropout_prob: float = 0.0
    """Dropout after attention output and MLP."""
    attention_probs_dropout_prob: float = 0.0
    """Dropout on attention probabilities."""
    qkv_bias: bool = True
    """Bias in the query/key/value projection."""
    activation_checkpointing: bool = False
    """Recompute each layer in the backward pass (non-re-entrant) to save memory."""

    def validate(self, name: str) -> None:
        """Raise a one-line ValueError for an impossible shape."""
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{name}.{key} must be positive, got {getattr(self, key)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{name}.hidden_size ({self.hidden_size}) must be a multiple of "
                f"{name}.num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"{name}.hidden_act={self.hidden_act!r}; allowed: {sorted(ACTIVATIONS)}"
            )


ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh")


@dataclass
class ImageEncoderConfig(EncoderConfig):
    """ViT image encoder: patch embedding, CLS, mask token, learned positions."""

    image_size: int = 224
    """Input resolution the position embeddings were learned for (others are interpolated)."""
    patch_size: int = 16
    """Side of a square patch in pixels."""
    num_channels: int = 3
    """Input channels."""
    vocab_size: int = 8192
    """Number of image tokens predicted by the MIM / MMM-image heads (the codebook size)."""

    @property
    def grid_size(self) -> int:
        """Patches per side at `image_size`."""
        return self.image_size // self.patch_size

    def validate(self, name: str = "image") -> None:
        """Check the shape, including that the patch size divides the image size."""
        super().validate(name)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"{name}.image_size ({self.image_size}) must be a multiple of "
                f"{name}.patch_size ({self.patch_size})"
            )


@dataclass
class TextEncoderConfig(EncoderConfig):
    """BERT-style text encoder (pre-LayerNorm layers, like the image encoder)."""

    vocab_size: int = 30522
    """WordPiece vocabulary size."""
    max_position_embeddings: int = 512
    """Longest text sequence."""
    type_vocab_size: int = 2
    """Number of token types (sentence A / B)."""
    pad_token_id: int = 0
    """Id of [PAD]."""


@dataclass
class MultimodalEncoderConfig(EncoderConfig):
    """Fusion encoder over [CLS; image_to_mm(image); text_to_mm(text)]."""

    num_hidden_layers: int = 6
    """Number of fusion layers."""


@dataclass
class CodebookConfig:
    """DALL-E discrete VAE encoder used as the MIM target tokenizer."""

    vocab_size: int = 8192
    """Number of codes."""
    hidden_size: int = 256
    """Base width of the encoder (groups use 1x, 2x, 4x, 8x)."""
    num_groups: int = 4
    """Number of resolution groups (three of them halve the resolution)."""
    num_blocks_per_group: int = 2
    """Residual blocks per group."""
    input_channels: int = 3
    """Input channels."""

    def validate(self, name: str = "codebook") -> None:
        """Check the shape."""
        if self.num_groups != 4:
            raise ValueError(
                f"{name}.num_groups must be 4 (the DALL-E layout), got {self.num_groups}"
            )
        for key in ("vocab_size", "hidden_size", "num_blocks_per_group", "input_channels"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{name}.{key} must be positive, got {getattr(self, key)}")


@dataclass
class FlavaConfig:
    """The whole FLAVA model: three encoders, projections, heads and (optionally) the codebook."""

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    """Image encoder."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """Text encoder."""
    multimodal: MultimodalEncoderConfig = field(default_factory=MultimodalEncoderConfig)
    """Multimodal fusion encoder."""
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    """Image codebook (DALL-E dVAE encoder)."""
    projection_dim: int = 768
    """Width of the contrastive embeddings (released checkpoints: 768)."""
    logit_scale_init_value: float = 2.6592
    """Initial contrastive logit scale, log(1/0.07)."""
    initializer_range: float = 0.02
    """Std of the normal initialisation of linear and embedding weights."""
    head_layer_norm_eps: float | None = None
    """LayerNorm epsilon of the MLM, MIM and MMM heads; None: their encoder's (transformers'
    FLAVA). The original release's heads use 1e-5, which its converted checkpoints keep."""

    def validate(self) -> FlavaConfig:
        """Check every part; returns self."""
        self.image.validate("image")
        self.text.validate("text")
        self.multimodal.validate("multimodal")
        self.codebook.validate("codebook")
        if self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be positive, got {self.projection_dim}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlavaConfig:
        """Build from `to_dict` output; unknown keys are an error naming the key."""
        parts = {
            "image": ImageEncoderConfig,
            "text": TextEncoderConfig,
            "multimodal": MultimodalEncoderConfig,
            "codebook": CodebookConfig,
        }
        kwargs: dict[str, Any] = {}
        top = {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in top:
                raise ValueError(f"unknown model config key {key!r}; allowed: {sorted(top)}")
            if key in parts:
                kwargs[key] = _build(parts[key], value, key)
            else:
                kwargs[key] = value
        return cls(**kwargs).validate()

    def with_activation_checkpointing(self, enabled: bool = True) -> FlavaConfig:
        """Copy with activation checkpointing switched on or off in every encoder."""
        out = FlavaConfig.from_dict(self.to_dict())
        for part in (out.image, out.text, out.multimodal):
            part.activation_checkpointing = enabled
        return out


def _build(kind: type, values: dict[str, Any], name: str) -> Any:
    allowed = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"unknown key {name}.{sorted(unknown)[0]}; allowed: {sorted(allowed)}")
    return kind(**values)
