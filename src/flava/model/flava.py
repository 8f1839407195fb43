"""FlavaModel (encoders + projections) and FlavaForPreTraining (+ five heads), paper section 3."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from flava.model.config import EncoderConfig, FlavaConfig
from flava.model.encoders import ImageEncoder, MultimodalEncoder, Pooler, TextEncoder
from flava.model.norm import LayerNorm
from flava.model.pretrained import Pretrained
from flava.model.transformer import EncoderOutput, activation

if TYPE_CHECKING:
    from flava.model.codebook import ImageCodebook


@dataclass
class FlavaOutput:
    """Encoder outputs of one forward pass; a modality that was not given is None."""

    image: EncoderOutput | None
    text: EncoderOutput | None
    multimodal: EncoderOutput | None


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for linear/embedding/conv weights, zeros for biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, ImageEncoder):
            for p in (m.cls_token, m.mask_token, m.pos_embed):
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
        elif isinstance(m, MultimodalEncoder):
            nn.init.trunc_normal_(m.cls_token, std=std, a=-2 * std, b=2 * std)


LOGIT_SCALE_MAX = math.log(100.0)
"""Upper bound of the contrastive log-scale (CLIP's temperature of 1/100)."""


class FlavaModel(Pretrained, nn.Module):
    """Image, text and multimodal encoders with contrastive and fusion projections."""

    def __init__(self, config: FlavaConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.image_encoder = ImageEncoder(config.image)
        self.text_encoder = TextEncoder(config.text)
        self.multimodal_encoder = MultimodalEncoder(config.multimodal)
        self.image_projection = nn.Linear(config.image.hidden_size, config.projection_dim)
        self.text_projection = nn.Linear(config.text.hidden_size, config.projection_dim)
        mm = config.multimodal.hidden_size
        self.image_to_mm_projection = nn.Linear(config.image.hidden_size, mm)
        self.text_to_mm_projection = nn.Linear(config.text.hidden_size, mm)
        # log temperature as a 1-element vector (transformers holds it 0-d; the checkpoint
        # mapping reshapes): FSDP2 shards no 0-d parameters
        self.logit_scale = nn.Parameter(torch.full((1,), float(config.logit_scale_init_value)))
        init_weights(self, config.initializer_range)

    def image_embedding(self, image: EncoderOutput) -> torch.Tensor:
        """Projected CLS of an image encoder output [B, P] (not normalised)."""
        return self.image_projection(image.last_hidden_state[:, 0])

    def text_embedding(self, text: EncoderOutput) -> torch.Tensor:
        """Projected CLS of a text encoder output [B, P] (not normalised)."""
        return self.text_projection(text.last_hidden_state[:, 0])

    def encode_image(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> projected CLS embedding [B, P] (not normalised)."""
        return self.image_embedding(self.image_encoder(pixel_values, bool_masked_pos))

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, L] token ids -> projected CLS embedding [B, P] (not normalised)."""
        return self.text_embedding(self.text_encoder(input_ids, attention_mask, token_type_ids))

    def similarity_logits(
        self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """Image-text logits [Bi, Bt]: cosine similarity of the embeddings ([Bi, P], [Bt, P],
        as `encode_image` / `encode_text` give them) times the learned temperature
        exp(logit_scale), as the contrastive loss scores pairs. Softmax over dim 1: which text
        fits each image; `.T` and softmax over dim 1: which image fits each text."""
        image = F.normalize(image_embeddings.float(), dim=-1)  # [Bi, P]
        text = F.normalize(text_embeddings.float(), dim=-1)  # [Bt, P]
        scale = self.logit_scale.float().clamp(0.0, LOGIT_SCALE_MAX).exp()  # [1]
        return scale * image @ text.T  # [Bi, Bt]

    def image_text_logits(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Similarity logits [Bi, Bt] of a batch of images [Bi, 3, H, W] against a batch of
        texts [Bt, L] (see `similarity_logits`)."""
        image = self.encode_image(pixel_values)
        text = self.encode_text(input_ids, attention_mask, token_type_ids)
        return self.similarity_logits(image, text)

    def fuse(
        self,
        image: EncoderOutput,
        text: EncoderOutput,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """Multimodal encoder over [CLS; image_to_mm(image); text_to_mm(text)] (pre-norm states)."""
        img = self.image_to_mm_projection(image.pre_norm_state)  # [B, 1 + Ni, Dm]
        txt = self.text_to_mm_projection(text.pre_norm_state)  # [B, Nt, Dm]
        mask = None
        if attention_mask is not None:
            mask = torch.cat([attention_mask.new_ones(img.shape[:2]), attention_mask], dim=1)
        return self.multimodal_encoder(
            torch.cat([img, txt], dim=1), mask, output_hidden_states, output_attentions
        )

    def encode_multimodal(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fused sequence [B, 1 + (1 + Ni) + Nt, Dm] after the multimodal encoder's LayerNorm."""
        return self(
            pixel_values, input_ids, attention_mask, token_type_ids, bool_masked_pos
        ).multimodal.last_hidden_state

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        skip_multimodal: bool = False,
    ) -> FlavaOutput:
        """Run whichever encoders the inputs call for; fuse when both modalities are given."""
        flags = (output_hidden_states, output_attentions)
        image = text = mm = None
        if pixel_values is not None:
            image = self.image_encoder(pixel_values, bool_masked_pos, *flags)
        if input_ids is not None:
            text = self.text_encoder(input_ids, attention_mask, token_type_ids, *flags)
        if image is not None and text is not None and not skip_multimodal:
            mm = self.fuse(image, text, attention_mask, *flags)
        return FlavaOutput(image, text, mm)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the stored log-scale to [0, ln 100] in place (after each optimizer step, as
        both reference implementations do: the gradient flows, and a scale pushed past the
        bound by one step can come back under the next)."""
        self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)


class MaskedPredictionHead(nn.Module):
    """dense + activation + LayerNorm + decoder to the vocabulary (MLM, MIM, MMM)."""

    def __init__(self, config: EncoderConfig, vocab_size: int, eps: float | None = None) -> None:
        """`eps`: the LayerNorm's epsilon (None: the encoder's)."""
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps if eps is None else eps)
        self.decoder = nn.Linear(config.hidden_size, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., V] logits."""
        return self.decoder(self.norm(self.act(self.dense(x))))


class ITMHead(nn.Module):
    """Image-text matching: pooler (dense + tanh on CLS) then a 2-way classifier."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.pooler = Pooler(config)
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] multimodal sequence -> [B, 2] logits."""
        return self.classifier(self.pooler(x))


class FlavaForPreTraining(Pretrained, nn.Module):
    """FlavaModel plus the MIM, MLM, MMM-image, MMM-text and ITM heads, and the image codebook."""

    def __init__(self, config: FlavaConfig, codebook: ImageCodebook | None | bool = True) -> None:
        """`codebook`: True builds a DALL-E codebook from config.codebook, None/False none."""
        super().__init__()
        self.config = config.validate()
        self.flava = FlavaModel(config)
        image_vocab, text_vocab = config.image.vocab_size, config.text.vocab_size
        eps = config.head_layer_norm_eps
        self.mim_head = MaskedPredictionHead(config.image, image_vocab, eps)
        self.mlm_head = MaskedPredictionHead(config.text, text_vocab, eps)
        self.mmm_image_head = MaskedPredictionHead(config.multimodal, image_vocab, eps)
        self.mmm_text_head = MaskedPredictionHead(config.multimodal, text_vocab, eps)
        self.itm_head = ITMHead(config.multimodal)
        for head in (self.mim_head, self.mlm_head, self.mmm_image_head, self.mmm_text_head):
            init_weights(head, config.initializer_range)
        init_weights(self.itm_head, config.initializer_range)
        if codebook is True:
            from flava.model.codebook import ImageCodebook

            codebook = ImageCodebook(config.codebook)
        self.codebook: ImageCodebook | None = codebook or None
        if self.codebook is not None:
            self.codebook.requires_grad_(False).eval()

    def resize_image_heads(self, vocab_size: int) -> None:
        """Rebuild the MIM and MMM-image heads for `vocab_size` image tokens (another codebook),
        initialised as at construction: N(0, initializer_range) weights, zero biases."""
        self.config.image.vocab_size = vocab_size
        eps = self.config.head_layer_norm_eps
        self.mim_head = MaskedPredictionHead(self.config.image, vocab_size, eps)
        self.mmm_image_head = MaskedPredictionHead(self.config.multimodal, vocab_size, eps)
        for head in (self.mim_head, self.mmm_image_head):
            init_weights(head, self.config.initializer_range)

    def train(self, mode: bool = True) -> FlavaForPreTraining:
        """Train mode for everything except the frozen codebook, which stays in eval."""
        super().train(mode)
        if self.codebook is not None:
            self.codebook.eval()
        return self

    def forward(self, *args: object, **kwargs: object) -> FlavaOutput:
        """The encoders' forward (see FlavaModel.forward); losses live in flava.objectives."""
        return self.flava(*args, **kwargs)
