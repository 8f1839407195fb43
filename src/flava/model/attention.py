"""Which attention kernel a device and dtype run: PyTorch's fused `scaled_dot_product_attention`
(flash / memory-efficient kernels) or the explicit path, two batched matrix products around a
softmax that keeps its statistics in fp32 inside the kernel.

The faster one differs by device and dtype (benchmarks/RESULTS.md: on Zen 4 CPUs in bf16 the
explicit path runs a flava_full step faster than SDPA's CPU flash kernel; in fp32, and on GPUs,
SDPA is faster), so it is chosen by measurement: `choose` times one forward + backward of each on
the run's shape and records the faster for the (device type, dtype); `kernel` answers from that
record, or from the default below where nothing was measured.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

KERNELS = ("sdpa", "explicit")
_chosen: dict[tuple[str, torch.dtype], str] = {}


def default_kernel(device_type: str, dtype: torch.dtype) -> str:
    """Unmeasured: explicit on CPU in bf16 / fp16 (SDPA's CPU flash kernel measured slower
    there), SDPA everywhere else."""
    half = dtype in (torch.bfloat16, torch.float16)
    return "explicit" if device_type == "cpu" and half else "sdpa"


def kernel(device_type: str, dtype: torch.dtype) -> str:
    """The kernel attention runs for this device type and compute dtype."""
    return _chosen.get((device_type, dtype)) or default_kernel(device_type, dtype)


def set_kernel(device_type: str, dtype: torch.dtype, name: str) -> None:
    """Fix the kernel for a device type and dtype (`choose` does this from a measurement)."""
    if name not in KERNELS:
        raise ValueError(f"attention kernel {name!r}: expected one of {', '.join(KERNELS)}")
    _chosen[(device_type, dtype)] = name


def explicit(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d) + mask) v for q, k, v [B, H, N, hd] and mask [B, 1, 1, N] (True =
    attend) -> (output [B, H, N, hd], probabilities [B, H, N, N]).

    The scale goes on q (N x hd values, not N x N); the softmax runs in the input dtype, its
    max and sum accumulated in fp32 by the kernel, so no N x N tensor is cast."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [B, H, N, N]
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    return F.dropout(probs, dropout, training) @ v, probs


def _time(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Best seconds of `repeats` calls of `fn` on `device` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def choose(
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    heads: int,
    tokens: int,
    head_dim: int,
    repeats: int = 3,
) -> dict[str, float]:
    """Time one forward + backward of each kernel on [batch, heads, tokens, head_dim] inputs,
    record the faster for (device type, dtype) and return the seconds of each."""
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch, heads, tokens, head_dim)
    q, k, v = (
        torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_()
        for _ in range(3)
    )
    grad = torch.randn(shape, generator=gen, device=device, dtype=dtype)

    def run(name: str) -> None:
        if name == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = explicit(q, k, v, None, 0.0, False)[0]
        torch.autograd.grad(out, (q, k, v), grad)

    seconds = {name: _time(functools.partial(run, name), repeats, device) for name in KERNELS}
    set_kernel(device.type, dtype, min(seconds, key=seconds.__getitem__))
    return seconds
