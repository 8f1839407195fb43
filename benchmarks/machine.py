"""What the benchmarks share: the machine's description and a time-bounded matmul peak.

Every benchmark prints `describe(machine_info(...))` at the top of its report and stores
`machine_info(...)` in its JSON, so that figures from an AVX2-only CPU are not mistaken for
figures from an AVX-512 one. `matmul_peak` never runs past its wall-time budget by more than one
product: it grows the matrix size from 128 only while a product stays well inside the budget, so
a slow dtype (bf16 emulated on a CPU without native bf16 instructions is about 75x slower than
fp32 on AVX2) gets a small size instead of minutes per product.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86; aarch64 reports "bf16" in Features


def log(message: str) -> None:
    """Print a progress line at once (benchmarks run for minutes; output must not sit buffered)."""
    print(message, flush=True)


def rss_now() -> int:
    """Current resident set size of this process in bytes (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_peak() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def report_head(script: str, raw: list[str], args: Any, machine: dict[str, Any]) -> dict[str, Any]:
    """The fields every benchmark report starts with: date, command, options, machine."""
    import datetime

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", f"benchmarks/{script}", *raw]),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {**machine, "load_average_end": os.getloadavg()},
    }


def sync(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_fields() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(fields: dict[str, str]) -> str:
    """The CPU's model name from /proc/cpuinfo, else `lscpu`, else platform.processor()."""
    if fields.get("model name"):
        return fields["model name"]
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_info() -> dict[str, Any]:
    """CPU model, torch's CPU capability, the vector/bf16 flags that matter here, core count."""
    fields = cpu_fields()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    native = any(f in flags for f in NATIVE_BF16_FLAGS) or (
        platform.machine() == "aarch64" and "bf16" in flags
    )
    return {
        "cpu_model": cpu_model(fields),
        "cpu_family_model_stepping": [fields.get(k) for k in ("cpu family", "model", "stepping")],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "vector_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "sve", "bf16"))),
        "native_bf16": native,
        "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """cpu_info() plus platform, torch version, load average and the CUDA device if used."""
    info = {
        **cpu_info(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }
    if device is not None and device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    return info


def describe(info: dict[str, Any]) -> str:
    """One line naming the machine, for the top of a report."""
    bf16 = "native bf16" if info["native_bf16"] else "no native bf16"
    line = (
        f"machine: {info['cpu_model']} (torch CPU capability {info['cpu_capability']}, {bf16}), "
        f"{info['cpu_count']} cores, {info['torch_threads']} torch threads, torch {info['torch']}, "
        f"load average {' '.join(f'{x:.2f}' for x in info['load_average'])}"
    )
    if "cuda_device" in info:
        line += f", GPU {info['cuda_device']}"
    return line


def slow_bf16_note(device: torch.device, info: dict[str, Any]) -> str | None:
    """The one-line warning for a bf16 run on a CPU without native bf16 (None otherwise)."""
    if device.type != "cpu" or info["native_bf16"]:
        return None
    return (
        f"note: this CPU ({info['cpu_capability']}) has no native bf16 instructions "
        f"({' / '.join(NATIVE_BF16_FLAGS)}): bf16 matrix products are emulated and much slower "
        "than fp32; the bf16 peak is measured at a small size within its time budget"
    )


def _product_seconds(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> float:
    """Wall time of one matrix product, device work included."""
    start = time.perf_counter()
    torch.matmul(a, b, out=out)
    sync(a.device)
    return time.perf_counter() - start


def _operands(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Two random n x n operands and an output buffer."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return a, b, torch.empty(n, n, device=device, dtype=dtype)


def pick_size(
    device: torch.device, dtype: torch.dtype, deadline: float, target_s: float, max_size: int
) -> tuple[int, tuple[torch.Tensor, ...]]:
    """Largest size in 128, 256, ... max_size whose product took at most `target_s` / 8 before
    doubling (a doubling costs about 8x), stopping early at half the time to `deadline`."""
    n = 128
    half = time.perf_counter() + (deadline - time.perf_counter()) / 2
    while True:
        ops = _operands(n, device, dtype)
        _product_seconds(*ops)  # first product of a size: allocation, kernel choice
        seconds = _product_seconds(*ops)
        if 2 * n > max_size or seconds * 8 > target_s or time.perf_counter() > half:
            return n, ops
        n *= 2


def matmul_peak(
    device: torch.device,
    dtype: torch.dtype,
    max_seconds: float = 4.0,
    max_size: int | None = None,
) -> dict[str, Any]:
    """Best achieved GFLOP/s of square matmuls over up to 4 rounds, within `max_seconds` in all.

    The clock is checked after every product; the size is at most 2048 on CPU, 8192 on GPU, and
    smaller where one product would take more than about an eighth of the budget.
    """
    name = str(dtype).removeprefix("torch.")
    log(f"measuring the {name} matmul peak on {device.type} (at most {max_seconds:.0f} s)...")
    start = time.perf_counter()
    deadline = start + max_seconds
    limit = max_size or (8192 if device.type == "cuda" else 2048)
    n, (a, b, out) = pick_size(device, dtype, deadline, max_seconds / 8, limit)
    flop = 2 * n**3
    best, products = 0.0, 0
    round_s = max(deadline - time.perf_counter(), 0.0) / 4
    for _ in range(4):
        count, begin = 0, time.perf_counter()
        while True:
            torch.matmul(a, b, out=out)
            sync(device)
            count += 1
            now = time.perf_counter()
            if now - begin >= round_s or now >= deadline:
                break
        products += count
        best = max(best, flop * count / (now - begin) / 1e9)
        if now >= deadline:
            break
    seconds = time.perf_counter() - start
    log(f"  {name} peak: {best:.1f} GFLOP/s (size {n}, {products} products, {seconds:.1f} s)")
    return {"dtype": name, "gflops": best, "size": n, "products": products, "seconds": seconds}


def write_report(path: Path | None, report: dict) -> None:
    """Write a benchmark's figures as JSON to `path` (if given) and say where."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        log(f"wrote {path}")
