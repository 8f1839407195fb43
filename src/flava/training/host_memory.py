"""How glibc's malloc serves a CPU training step's large tensors (`training.host_memory`).

By default glibc hands out blocks above a threshold (128 KiB, rising to at most 32 MiB as such
blocks are freed) straight from the kernel with `mmap`, and gives them back on free. A step of
`flava_full` allocates and frees thousands of such tensors (attention maps, MLP activations, cast
weights, gradients), so every step pays the kernel to map and zero them again: page faults that
profile as `copy_` / `fill_` / `mul` running at a fraction of memory speed. Measured on 2 Zen 4
cores with AVX512-BF16 (benchmarks/RESULTS.md): a bf16 step took 13.0-14.0 s with about 360,000
page faults, and 10.1-10.4 s with none when freed blocks are kept for reuse, at the same peak RSS.

Policies:
- `reuse`: keep freed blocks of up to 1 GiB in the heap for the next step (the default on CPU);
- `return`: serve blocks of 64 KiB and more by mmap and trim the heap at once, so that freed memory
  goes back to the system (the default under FSDP2 on CPU, whose per-unit gather buffers otherwise
  fragment the heap until a process holds as much as DDP's; steps are slower);
- `system`: leave malloc as it is (the default on GPUs, whose tensors are not in host memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
REUSE_MMAP_THRESHOLD = 1 << 30
"""`reuse`: blocks below 1 GiB come from the heap (and go back to it when freed)."""
REUSE_TRIM_THRESHOLD = (1 << 31) - 1
"""`reuse`: the heap's free top is kept up to 2 GiB instead of being trimmed after each step."""

POLICIES = ("auto", "reuse", "return", "system")


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """glibc: serve blocks below 1 GiB from the heap and keep what is freed for the next step.
    False where glibc's mallopt is absent or refuses."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, REUSE_MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, REUSE_TRIM_THRESHOLD)
    )


def return_freed_memory() -> bool:
    """glibc: serve blocks of 64 KiB and more by mmap and trim the heap at once, so that freed
    memory goes back to the system (benchmarks/RESULTS.md, FSDP2 vs DDP: flava_full, 2 processes,
    peak per process 0.999x DDP's by default, 0.566x with this; steps ~12% slower for both
    strategies). False where glibc's mallopt is absent or refuses."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 64 * 1024)) and bool(mallopt(M_TRIM_THRESHOLD, 0))


def resolve(policy: str, strategy: str, on_cpu: bool) -> str:
    """The policy `auto` stands for: `system` on GPUs, `return` under fsdp on CPU, else `reuse`."""
    if policy not in POLICIES:
        raise ValueError(f"training.host_memory={policy!r}: expected one of {', '.join(POLICIES)}")
    if policy != "auto":
        return policy
    if not on_cpu:
        return "system"
    return "return" if strategy == "fsdp" else "reuse"


def apply(policy: str, strategy: str = "auto", on_cpu: bool = True) -> str:
    """Set this process's malloc per `policy` (resolved first); returns what was done, for the
    run's log ('reuse', 'return', 'system', or '<policy> (not available: no glibc mallopt)')."""
    chosen = resolve(policy, strategy, on_cpu)
    setters = {"reuse": keep_freed_memory, "return": return_freed_memory}
    if chosen in setters and not setters[chosen]():
        return f"{chosen} (not available: no glibc mallopt)"
    return chosen
