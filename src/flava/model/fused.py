"""Memory-saving fused operations of the transformer block: the one place that bypasses autograd.

Two pairs of operations in each layer run as one autograd function that recomputes an
elementwise result in the backward pass instead of keeping it for backward:

- `norm_linear`: ``linear(layer_norm(x))`` keeps ``x`` (which autograd keeps anyway for the norm's
  gradient) but not the norm's output (``qkv`` after ``norm1``, ``fc1`` after ``norm2``);
- `gelu_linear`: ``linear(gelu(h))`` keeps ``h`` but not ``gelu(h)`` (``fc2`` in the MLP), about a
  third of a layer's activation memory.

Outputs and gradients are bitwise those of the plain modules (tests/model/test_numerics.py); the
saving is measured in benchmarks/RESULTS.md ("Memory changes"). Without gradients (inference)
both run as the plain modules.

Under bf16 / fp16 autocast their products take the weights' half-precision copy from `cast_once`:
made at the first use after an optimizer step and reused by every later forward and backward of
the step (the image and text encoders run twice per pair step), where autocast's own cache lives
only as long as one forward.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from flava.model.norm import LayerNorm, layer_norm, layer_norm_backward, layer_norm_with_stats


def norm_linear(norm: LayerNorm, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(norm(x))`` [..., D] -> [..., out]; with gradients on, not keeping ``norm(x)``."""
    if not torch.is_grad_enabled():
        return linear(norm(x))
    shape = tuple(norm.normalized_shape)
    return _NormLinear.apply(x, norm.weight, norm.bias, linear.weight, linear.bias, shape, norm.eps)


def gelu_linear(h: torch.Tensor, linear: nn.Linear, approximate: str) -> torch.Tensor:
    """``linear(gelu(h, approximate))`` [..., F] -> [..., out]; not keeping ``gelu(h)``."""
    if not torch.is_grad_enabled():
        return linear(F.gelu(h, approximate=approximate))
    return _GeluLinear.apply(h, linear.weight, linear.bias, approximate)


_casts: dict[int, tuple[weakref.ref, tuple[int, int, int], torch.Tensor]] = {}
_generation = [0]  # moved by every optimizer step (fused AdamW leaves version counters alone)


def _forget_cast(key: int, _: object) -> None:
    """Drop the cached cast of a weight that is gone (its weak reference's callback)."""
    _casts.pop(key, None)


def clear_casts(*_: Any) -> None:
    """Forget every weight copy of `cast_once`: weights changed in a way it cannot see (through
    `.data`). Every torch optimizer's step calls this."""
    _generation[0] += 1
    _casts.clear()


register_optimizer_step_post_hook(clear_casts)


def cast_once(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype` (detached), cast once per change of the weight: the copy is kept until
    an optimizer steps (any torch optimizer), the weight is modified in place (its version counter
    moves) or replaced, and is dropped with the weight. A weight changed through `.data` needs
    `clear_casts()`."""
    if weight.dtype == dtype:
        return weight.detach()
    if torch.compiler.is_compiling():  # a compiled graph casts once per use itself; no cache
        return weight.detach().to(dtype)
    key = id(weight)
    stamp = (_generation[0], weight._version, weight.data_ptr())
    entry = _casts.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == stamp and entry[2].dtype == dtype:
        return entry[2]
    copy = weight.detach().to(dtype)
    _casts[key] = (weakref.ref(weight, functools.partial(_forget_cast, key)), stamp, copy)
    return copy


def compute_dtype(device_type: str, own: torch.dtype) -> torch.dtype:
    """The dtype a product runs in: autocast's where it is on for the device, else `own` (the
    weights' dtype)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return own


def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F.linear as autocast would run it, inputs cast to its dtype, with the weights' copies
    from `cast_once`; the weight as the product used it, which backward must use too)."""
    dtype = compute_dtype(x.device.type, weight.dtype)
    if dtype == weight.dtype:
        return F.linear(x, weight, bias), weight
    b = None if bias is None else cast_once(bias, dtype)
    w = cast_once(weight, dtype)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(dtype), w, b), w


def _product_grads(
    grad_out: torch.Tensor,
    product_input: torch.Tensor,
    weight: torch.Tensor,
    used: torch.Tensor,
    need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (input, weight, bias) of ``F.linear(product_input, weight, bias)``, each only if
    ``need`` says so; the product ran in ``grad_out``'s dtype (autocast's, else the weights'),
    with ``used``, the weight in that dtype."""
    dtype = grad_out.dtype
    grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
    grad_input = grad_weight = grad_bias = None
    if need[0]:
        grad_input = (grad_out @ used).to(product_input.dtype)
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
        out, used = _linear(layer_norm(x, shape, norm_weight, norm_bias, eps), weight, bias)
        ctx.save_for_backward(x, norm_weight, norm_bias, weight, None if used is weight else used)
        ctx.shape, ctx.eps, ctx.has_bias = shape, eps, bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, norm_weight, norm_bias, weight, used = ctx.saved_tensors
        used = weight if used is None else used
        need = ctx.needs_input_grad[:5]
        normed, mean, rstd = layer_norm_with_stats(x, ctx.shape, norm_weight, norm_bias, ctx.eps)
        norm_need = (need[0], need[1], need[2] and norm_bias is not None)
        product_need = (any(norm_need), need[3], need[4] and ctx.has_bias)
        grad_normed, grad_weight, grad_bias = _product_grads(
            grad_out, normed, weight, used, product_need
        )
        norm_grads: tuple[torch.Tensor | None, ...] = (None, None, None)
        if grad_normed is not None:  # computed when any(norm_need)
            norm_grads = layer_norm_backward(
                grad_normed, x, ctx.shape, (mean, rstd), norm_weight, norm_bias, norm_need
            )
        return (*norm_grads, grad_weight, grad_bias, None, None)


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
        out, used = _linear(F.gelu(h, approximate=approx), weight, bias)
        ctx.save_for_backward(h, weight, None if used is weight else used)
        ctx.approximate, ctx.has_bias = approx, bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight, used = ctx.saved_tensors
        used = weight if used is None else used
        need_h, need_weight, need_bias, _ = ctx.needs_input_grad
        acted = F.gelu(h, approximate=ctx.approximate)
        need = (need_h, need_weight, need_bias and ctx.has_bias)
        grad_acted, grad_weight, grad_bias = _product_grads(grad_out, acted, weight, used, need)
        grad_h = None
        if need_h:
            grad_h = torch.ops.aten.gelu_backward(grad_acted, h, approximate=ctx.approximate)
        return grad_h, grad_weight, grad_bias, None
