"""The fine-tuning classifier (paper section 5): an MLP head on one encoder's pooled CLS.

Text tasks read the text encoder, image tasks the image encoder, multimodal tasks the
multimodal encoder over the fused image and text states. Saving and loading a fine-tuned
classifier lives in `flava.checkpoints.finetuned`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from flava.model.encoders import ImageEncoder, MultimodalEncoder, TextEncoder
from flava.model.flava import FlavaModel
from flava.model.transformer import activation


class FlavaClassifier(nn.Module):
    """FlavaModel + MLP head (Linear(D, 1536), activation, dropout, Linear(1536, outputs))."""

    def __init__(
        self,
        flava: FlavaModel,
        modality: str,
        num_outputs: int,
        hidden_size: int = 1536,
        act: str = "gelu",
        dropout: float = 0.1,
        pooling: str = "pooler",
    ) -> None:
        super().__init__()
        if modality not in ("text", "image", "multimodal"):
            raise ValueError(f"modality must be text, image or multimodal, got {modality!r}")
        self.flava, self.modality, self.pooling = flava, modality, pooling
        self.settings: dict[str, Any] = dict(
            modality=modality,
            num_outputs=num_outputs,
            hidden_size=hidden_size,
            act=act,
            dropout=dropout,
            pooling=pooling,
        )
        width = self.encoder.config.hidden_size
        self.head = nn.Sequential(
            nn.Linear(width, hidden_size),
            activation(act),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_outputs),
        )
        std = flava.config.initializer_range
        for layer in self.head:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=std)
                nn.init.zeros_(layer.bias)
        self._freeze_unused()

    @property
    def encoder(self) -> ImageEncoder | TextEncoder | MultimodalEncoder:
        """The encoder whose CLS the head reads."""
        f = self.flava
        encoders: dict[str, ImageEncoder | TextEncoder | MultimodalEncoder] = {
            "text": f.text_encoder,
            "image": f.image_encoder,
            "multimodal": f.multimodal_encoder,
        }
        return encoders[self.modality]

    def _freeze_unused(self) -> None:
        """Parameters the task never reaches get no gradient (and no optimiser state)."""
        f = self.flava
        used: list[nn.Module] = [self.encoder]
        if self.modality == "multimodal":
            used += [f.image_encoder, f.text_encoder, f.image_to_mm_projection]
            used.append(f.text_to_mm_projection)
        f.requires_grad_(False)
        for module in used:
            module.requires_grad_(True)
        for enc in (f.image_encoder, f.text_encoder, f.multimodal_encoder):
            if enc is not self.encoder or self.pooling != "pooler":
                enc.pooler.requires_grad_(False)

    def features(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The pooled CLS [B, D] the head reads."""
        f = self.flava
        if self.modality == "text":
            out = f.text_encoder(input_ids, attention_mask, token_type_ids)
        elif self.modality == "image":
            out = f.image_encoder(pixel_values)
        else:
            image = f.image_encoder(pixel_values)
            text = f.text_encoder(input_ids, attention_mask, token_type_ids)
            out = f.fuse(image, text, attention_mask)
        states = out.last_hidden_state
        return self.encoder.pooler(states) if self.pooling == "pooler" else states[:, 0]

    def forward(self, **inputs: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, outputs] from pixel_values / input_ids / attention_mask / token_type_ids."""
        return self.head(self.features(**inputs))
