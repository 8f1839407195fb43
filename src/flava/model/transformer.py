"""The pre-LayerNorm transformer shared by FLAVA's three encoders (paper section 3.1, ViT-style).

`Layer.forward` is the paper's block. In training, each norm and the projection after it, and
the MLP's GELU and ``fc2``, run as the memory-saving functions of `flava.model.fused` (same
numbers, less kept for backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from flava.model import attention, fused
from flava.model.config import EncoderConfig
from flava.model.norm import LayerNorm


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


def _explicit_attention(q: torch.Tensor) -> bool:
    """Whether attention on `q`'s device and dtype runs the explicit path rather than SDPA
    (`flava.model.attention`: chosen by measurement per device and dtype)."""
    return attention.kernel(q.device.type, q.dtype) == "explicit"


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
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_attention: bool = False,
        norm: LayerNorm | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """attn(norm(x)): x [B, N, D], mask [B, 1, 1, N] bool (True = attend) -> ([B, N, D],
        attention [B, H, N, N] or None); without `norm`, attn(x)."""
        qkv = self.qkv(x) if norm is None else fused.norm_linear(norm, self.qkv, x)  # [B, N, 3D]
        b, n, d = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, hd]
        dropout = self.attn_dropout if self.training else 0.0
        weights = None
        if return_attention or _explicit_attention(q):
            out, probs = attention.explicit(q, k, v, mask, dropout, self.training)  # [B, H, N, hd]
            weights = probs if return_attention else None
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, n, d)  # [B, N, D]
        return self.proj(out), weights


class MLP(nn.Module):
    """Two-layer feed-forward block, fc2(act(fc1(x))).

    With a GELU activation, ``fc2(gelu(h))`` runs as `fused.gelu_linear`, which recomputes the
    GELU in the backward pass instead of keeping its output; results and gradients are those of
    the plain modules.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        # the GELU's own setting ("none" = exact erf, "tanh"); None for any other activation
        self.gelu_approximation = self.act.approximate if isinstance(self.act, nn.GELU) else None

    def forward(self, x: torch.Tensor, norm: LayerNorm | None = None) -> torch.Tensor:
        """mlp(norm(x)): [B, N, D] -> [B, N, D]; without `norm`, mlp(x)."""
        h = self.fc1(x) if norm is None else fused.norm_linear(norm, self.fc1, x)  # [B, N, F]
        if self.gelu_approximation is not None:
            return fused.gelu_linear(h, self.fc2, self.gelu_approximation)  # [B, N, D]
        return self.fc2(self.act(h))  # [B, N, D]


class Layer(nn.Module):
    """The pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    Each sublayer is handed its norm rather than the norm's output, so that the norm runs together
    with the projection after it (`fused.norm_linear`: the norm's output is not kept for backward).
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
        attn, weights = self.attn(x, mask, return_attention, norm=self.norm1)  # attn(norm1(x))
        x = x + self.dropout(attn)  # x + attn(norm1(x)): [B, N, D]
        x = x + self.dropout(self.mlp(x, norm=self.norm2))  # x + mlp(norm2(x)): [B, N, D]
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
    """[B, N] of 1/0 -> SDPA boolean mask [B, 1, 1, N], or None when nothing is padded (while
    traced for ONNX export or compiled always the mask: whether anything is padded is the
    input's to say, and asking would break the compiled graph)."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if not traced and bool(mask.all()):
        return None
    return mask[:, None, None, :]
