"""The pre-LayerNorm transformer shared by FLAVA's three encoders (paper section 3.1, ViT-style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from flava.model.config import EncoderConfig


def activation(name: str) -> nn.Module:
    """The MLP activation by name (`gelu` is the exact erf GELU)."""
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_tanh", "gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    if name == "quick_gelu":
        return _QuickGELU()
    raise ValueError(f"unknown activation {name!r}")


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _layer_norm(
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
        return _layer_norm(x, tuple(self.normalized_shape), self.weight, self.bias, self.eps)


def _product_grads(
    grad_out: torch.Tensor,
    product_input: torch.Tensor,
    weight: torch.Tensor,
    need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (input, weight, bias) of ``F.linear(product_input, weight, bias)``, each only if
    ``need`` says so; the product ran in ``grad_out``'s dtype (autocast's, else the weights')."""
    dtype = grad_out.dtype
    grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
    grad_input = grad_weight = grad_bias = None
    if need[0]:
        grad_input = (grad_out @ weight.to(dtype)).to(product_input.dtype)
    if need[1]:
        flat = product_input.detach().to(dtype).reshape(-1, product_input.shape[-1])
        grad_weight = (grad_2d.t() @ flat).to(weight.dtype)
    if need[2]:
        grad_bias = grad_2d.sum(0).to(weight.dtype)
    return grad_input, grad_weight, grad_bias


class _NormLinear(torch.autograd.Function):
    """``linear(layer_norm(x), weight, bias)`` that keeps ``x`` but not the norm's output.

    Eager autograd keeps both the norm's input (for the normalisation's gradient) and its output
    (for the product's weight gradient); the output is recomputed here in the backward pass
    instead, one elementwise pass per layer norm.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        norm_weight: torch.Tensor,
        norm_bias: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        shape: tuple[int, ...],
        eps: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, norm_weight, norm_bias, weight)
        ctx.shape, ctx.eps, ctx.has_bias = shape, eps, bias is not None
        return F.linear(_layer_norm(x, shape, norm_weight, norm_bias, eps), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, norm_weight, norm_bias, weight = ctx.saved_tensors
        need = ctx.needs_input_grad[:5]
        leaves = [t.detach().requires_grad_(n) for t, n in zip((x, norm_weight, norm_bias), need)]
        with torch.enable_grad():
            normed = _layer_norm(leaves[0], ctx.shape, leaves[1], leaves[2], ctx.eps)
        wanted = [i for i in range(3) if need[i]]
        product_need = (bool(wanted), need[3], need[4] and ctx.has_bias)
        grad_normed, grad_weight, grad_bias = _product_grads(grad_out, normed, weight, product_need)
        grads: list[torch.Tensor | None] = [None, None, None, grad_weight, grad_bias]
        if wanted:
            found = torch.autograd.grad(normed, [leaves[i] for i in wanted], grad_normed)
            for i, g in zip(wanted, found):
                grads[i] = g
        return (*grads, None, None)


def norm_linear(norm: LayerNorm, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(norm(x))``; with gradients on, without keeping ``norm(x)`` for backward."""
    if not torch.is_grad_enabled():
        return linear(norm(x))
    shape = tuple(norm.normalized_shape)
    return _NormLinear.apply(x, norm.weight, norm.bias, linear.weight, linear.bias, shape, norm.eps)


def _explicit_attention(q: torch.Tensor) -> bool:
    """Whether to compute attention as matmul + softmax rather than with SDPA.

    On CPU in bf16 / fp16, SDPA's flash kernel runs at about half the speed of two batched
    matrix products (benchmarks/train_step.py: flava_full, batch 8); elsewhere SDPA is faster.
    """
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection and SDPA."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, N, D], mask [B, 1, 1, N] bool (True = attend) -> ([B, N, D], attention or None)."""
        return self.attend(self.qkv(x), mask, return_attention)

    def attend(
        self, qkv: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rest of `forward` from the fused projection ``qkv`` [B, N, 3D]."""
        b, n, d = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, hd]
        dropout = self.attn_dropout if self.training else 0.0
        weights = None
        if return_attention or _explicit_attention(q):
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # [B, H, N, N]
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)  # fp32 stats
            weights = probs if return_attention else None
            out = F.dropout(probs, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, n, d)  # [B, N, D]
        return self.proj(out), weights


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)`` that keeps only ``h`` for the backward pass.

    Eager autograd keeps two ``[B, N, 4D]`` tensors per MLP: ``h`` for GELU's gradient and
    ``gelu(h)`` for the weight gradient. Recomputing the GELU in the backward pass (one elementwise
    pass, no matrix product) drops the second: about a third of a layer's activation memory.
    """

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approx: str
    ) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.approximate, ctx.has_bias = approx, bias is not None
        return F.linear(F.gelu(h, approximate=approx), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        need_h, need_weight, need_bias, _ = ctx.needs_input_grad
        acted = F.gelu(h, approximate=ctx.approximate)
        need = (need_h, need_weight, need_bias and ctx.has_bias)
        grad_acted, grad_weight, grad_bias = _product_grads(grad_out, acted, weight, need)
        grad_h = None
        if need_h:
            grad_h = torch.ops.aten.gelu_backward(grad_acted, h, approximate=ctx.approximate)
        return grad_h, grad_weight, grad_bias, None


class MLP(nn.Module):
    """Two-layer feed-forward block.

    With a GELU activation and gradients on, ``fc2(gelu(h))`` runs as one autograd function that
    recomputes the GELU in the backward pass instead of storing its output (see `_GeluLinear`);
    the result and the gradients are those of the plain modules.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        # the GELU's own setting ("none" = exact erf, "tanh"); None for any other activation
        self.gelu_approximation = self.act.approximate if isinstance(self.act, nn.GELU) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, N, D]."""
        return self.project(self.fc1(x))

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """The rest of `forward` from fc1's output ``h`` [B, N, F]."""
        if self.gelu_approximation is not None and torch.is_grad_enabled():
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias, self.gelu_approximation)
        return self.fc2(self.act(h))


class Layer(nn.Module):
    """x + attn(norm1(x)), then + mlp(norm2(x)).

    Each norm runs with the projection after it as one autograd function (`norm_linear`) that
    recomputes the norm's output in backward rather than keeping it.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, N, D] -> ([B, N, D], attention map [B, H, N, N] or None)."""
        qkv = norm_linear(self.norm1, self.attn.qkv, x)
        attn, weights = self.attn.attend(qkv, mask, return_attention)
        x = x + self.dropout(attn)
        x = x + self.dropout(self.mlp.project(norm_linear(self.norm2, self.mlp.fc1, x)))
        return x, weights


@dataclass
class EncoderOutput:
    """What an encoder returns; `hidden_states` / `attentions` only when asked for."""

    last_hidden_state: torch.Tensor
    """Final sequence after the encoder's last LayerNorm [B, N, D]."""
    pre_norm_state: torch.Tensor
    """Final sequence before that LayerNorm [B, N, D] (the multimodal encoder's input)."""
    hidden_states: tuple[torch.Tensor, ...] | None = None
    """Input of every layer plus the last output (num_layers + 1 tensors)."""
    attentions: tuple[torch.Tensor, ...] | None = None
    """Attention probabilities of every layer [B, H, N, N]."""


class Encoder(nn.Module):
    """A stack of `Layer`s with optional non-re-entrant activation checkpointing."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.activation_checkpointing = config.activation_checkpointing

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """[B, N, D] -> (last [B, N, D], hidden states or None, attentions or None)."""
        states: list[torch.Tensor] = []
        maps: list[torch.Tensor] = []
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if output_hidden_states:
                states.append(x)
            if recompute:
                x, weights = checkpoint(layer, x, mask, output_attentions, use_reentrant=False)
            else:
                x, weights = layer(x, mask, output_attentions)
            if output_attentions:
                maps.append(weights)
        if output_hidden_states:
            states.append(x)
        return (
            x,
            tuple(states) if output_hidden_states else None,
            tuple(maps) if output_attentions else None,
        )


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, N] of 1/0 -> SDPA boolean mask [B, 1, 1, N], or None when nothing is padded."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if bool(mask.all()):
        return None
    return mask[:, None, None, :]
