"""Layer normalisation computed in fp32 under bf16 / fp16 autocast (the transformer's norms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def layer_norm(
    x: torch.Tensor,
    shape: tuple[int, ...],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Layer norm computed in fp32 even under bf16/fp16 autocast; returns the input dtype."""
    if x.dtype == torch.float32:
        return F.layer_norm(x, shape, weight, bias, eps)
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    with torch.autocast(x.device.type, enabled=False):
        out = F.layer_norm(x.float(), shape, w, b, eps)
    return out.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 even under bf16/fp16 autocast; returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D]."""
        return layer_norm(x, tuple(self.normalized_shape), self.weight, self.bias, self.eps)
