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
    work, w, b = _in_fp32(x, weight, bias)
    with torch.autocast(x.device.type, enabled=False):
        out = F.layer_norm(work, shape, w, b, eps)
    return out.to(x.dtype)


def _in_fp32(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """x, weight and bias as the norm computes with them: in fp32 (no copy of an fp32 one)."""
    return (
        x.float(),
        None if weight is None else weight.float(),
        None if bias is None else bias.float(),
    )


def layer_norm_with_stats(
    x: torch.Tensor,
    shape: tuple[int, ...],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(`layer_norm` of x, mean, reciprocal standard deviation), without autograd: the forward
    and the statistics `layer_norm_backward` takes. The same kernel and casts as `layer_norm`."""
    work, w, b = _in_fp32(x, weight, bias)
    with torch.autocast(x.device.type, enabled=False):
        out, mean, rstd = torch.ops.aten.native_layer_norm(work, list(shape), w, b, eps)
    return out.to(x.dtype), mean, rstd


def layer_norm_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    shape: tuple[int, ...],
    stats: tuple[torch.Tensor, torch.Tensor],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (x, weight, bias) of `layer_norm`, each only where `need` says, given the
    statistics of `layer_norm_with_stats`: the operations autograd runs for `layer_norm`, in the
    same order and dtypes, called directly (no autograd graph to rebuild, nothing for
    `torch.compile` to break on)."""
    work, w, b = _in_fp32(x, weight, bias)
    mean, rstd = stats
    with torch.autocast(x.device.type, enabled=False):
        grads = torch.ops.aten.native_layer_norm_backward(
            grad_out.float(), work, list(shape), mean, rstd, w, b, list(need)
        )
    owners = (x, weight, bias)
    out = [
        None if g is None or t is None or not n else g.to(t.dtype)
        for g, n, t in zip(grads, need, owners, strict=True)
    ]
    return out[0], out[1], out[2]


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 even under bf16/fp16 autocast; returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D]."""
        return layer_norm(x, tuple(self.normalized_shape), self.weight, self.bias, self.eps)
