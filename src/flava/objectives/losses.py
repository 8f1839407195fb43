"""The loss functions of FLAVA's five objectives (paper section 3.2).

Global contrastive loss gathers embeddings from every process with gradients flowing back
through the gather, but computes only the local rows of the logits, so memory stays linear in
the global batch. Masked prediction heads run only on the masked positions.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE_MAX = math.log(100.0)
IGNORE_INDEX = -100


def _gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All rows of `x` from every process (autograd flows back to each) and this rank's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x)
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def contrastive_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: torch.Tensor,
    max_logit_scale: float = LOGIT_SCALE_MAX,
) -> dict[str, torch.Tensor]:
    """Global InfoNCE over L2-normalised embeddings [B, P]; `logit_scale` is the log-scale.

    Returns {"contrastive": loss, "contrastive_accuracy": image->text top-1 accuracy}.
    """
    image = F.normalize(image_embeddings.float(), dim=-1)  # [B, P]
    text = F.normalize(text_embeddings.float(), dim=-1)  # [B, P]
    scale = logit_scale.float().clamp(max=max_logit_scale).exp()
    all_image, offset = _gather_with_grad(image)  # [W*B, P]
    all_text, _ = _gather_with_grad(text)
    labels = torch.arange(image.shape[0], device=image.device) + offset
    logits_per_image = scale * image @ all_text.T  # [B, W*B]
    logits_per_text = scale * text @ all_image.T  # [B, W*B]
    loss = (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2
    accuracy = (logits_per_image.argmax(-1) == labels).float().mean()
    return {"contrastive": loss, "contrastive_accuracy": accuracy.detach()}


def masked_prediction_loss(
    head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy of `head` on the positions of `hidden` [B, N, D] whose label is set [B, N].

    The head (dense + LayerNorm + decoder to the vocabulary) runs only on those positions.
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"hidden states {tuple(hidden.shape[:2])} and labels {tuple(labels.shape)} differ"
        )
    selected = labels != ignore_index  # [B, N]
    logits = head(hidden[selected])  # [M, V]
    if logits.shape[0] == 0:  # nothing masked: a zero that keeps the graph
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels[selected])


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Image-text matching cross-entropy over [B, 2] logits; labels 1 = matched, 0 = not."""
    loss = F.cross_entropy(logits.float(), labels.long())
    accuracy = (logits.argmax(-1) == labels).float().mean()
    return {"itm": loss, "itm_accuracy": accuracy.detach()}
