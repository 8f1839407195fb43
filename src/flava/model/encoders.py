"""FLAVA's image, text and multimodal encoders (paper section 3.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flava.model.config import (
    EncoderConfig,
    ImageEncoderConfig,
    MultimodalEncoderConfig,
    TextEncoderConfig,
)
from flava.model.norm import LayerNorm
from flava.model.transformer import Encoder, EncoderOutput, padding_mask


class Pooler(nn.Module):
    """dense + tanh on the first token."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, D]."""
        return torch.tanh(self.dense(x[:, 0]))


class _EncoderBase(nn.Module):
    """Transformer stack + final LayerNorm + pooler shared by the three encoders."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.encoder = Encoder(config)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = Pooler(config)

    def _run(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool,
        output_attentions: bool,
    ) -> EncoderOutput:
        last, states, maps = self.encoder(
            x, padding_mask(attention_mask), output_hidden_states, output_attentions
        )
        return EncoderOutput(self.norm(last), last, states, maps)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Switch non-re-entrant activation checkpointing of every layer."""
        self.encoder.activation_checkpointing = enabled


class ImageEncoder(_EncoderBase):
    """ViT: patch embedding, CLS token, learned mask token, learned (interpolated) positions."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__(config)
        self.config = config
        d = config.hidden_size
        self.patch_embed = nn.Conv2d(
            config.num_channels, d, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size**2 + 1, d))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def positions(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings [1, 1 + h*w, D] for a grid of h x w patches (bicubic if resized)."""
        g = self.config.grid_size
        if (height, width) == (g, g):
            return self.pos_embed
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = grid.shape[-1]
        grid = grid.reshape(1, g, g, d).permute(0, 3, 1, 2)  # [1, D, g, g]
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, height * width, d)], dim=1)

    def embed(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, C, H, W] (+ mask [B, N] or [B, h, w]) -> [B, 1 + N, D]."""
        p = self.config.patch_size
        b, _, height, width = pixel_values.shape
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {p}; "
                "resize or crop the images (see flava.image_transform)"
            )
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # [B, D, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        if bool_masked_pos is not None:
            masked = bool_masked_pos.reshape(b, -1, 1).to(x.dtype)  # [B, N, 1]
            x = x * (1.0 - masked) + self.mask_token.to(x.dtype) * masked
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)  # [B, 1 + N, D]
        x = x + self.positions(height // p, width // p).to(x.dtype)
        return self.dropout(x)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """[B, C, H, W] -> EncoderOutput over [CLS; patches]."""
        x = self.embed(pixel_values, bool_masked_pos)
        return self._run(x, None, output_hidden_states, output_attentions)


class TextEncoder(_EncoderBase):
    """BERT embeddings (word + position + token type, LayerNorm) and pre-LN layers."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__(config)
        self.config = config
        d = config.hidden_size
        self.word_embed = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.pos_embed = nn.Embedding(config.max_position_embeddings, d)
        self.type_embed = nn.Embedding(config.type_vocab_size, d)
        self.embed_norm = LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """[B, L] -> [B, L, D]."""
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"text length {length} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}; truncate with the tokenizer's max_length"
            )
        positions = torch.arange(length, device=input_ids.device)
        x = self.word_embed(input_ids) + self.pos_embed(positions)[None]
        if token_type_ids is None:
            x = x + self.type_embed.weight[0]
        else:
            x = x + self.type_embed(token_type_ids)
        return self.dropout(self.embed_norm(x))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """[B, L] ids (+ [B, L] 1/0 padding mask) -> EncoderOutput."""
        x = self.embed(input_ids, token_type_ids)
        return self._run(x, attention_mask, output_hidden_states, output_attentions)


class MultimodalEncoder(_EncoderBase):
    """Fusion transformer over [CLS; image states; text states]."""

    def __init__(self, config: MultimodalEncoderConfig) -> None:
        super().__init__(config)
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """[B, N, D] projected unimodal states (+ [B, N] mask) -> EncoderOutput over 1 + N."""
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)  # [B, 1 + N, D]
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(b, 1), attention_mask], dim=1)
        return self._run(x, attention_mask, output_hidden_states, output_attentions)
