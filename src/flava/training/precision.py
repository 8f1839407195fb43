"""Precision that fits the hardware: `training.lightning.precision` checked and `auto` resolved;
`training.compile=auto` resolved for the precision chosen.

bf16 / fp16 on a CPU without native units for them run matrix products tens of times slower
than fp32 (about 75x on AVX2), so a run asking for them there stops before any work with one
line (`ConfigError`, exit status 2) unless `training.lightning.force_precision=true`. `auto` picks
bf16-mixed on GPUs with native bf16, 16-mixed on older GPUs, bf16-mixed on CPUs with native
bf16 and 32 elsewhere; the resolved value replaces `auto` in the config the run directory keeps.
"""

from __future__ import annotations

import functools
import logging
import platform
import subprocess
import sys
from pathlib import Path
from typing import Literal, get_args

import torch

from flava.config import PRECISIONS, ConfigError, LightningConfig, Precision, RunConfig
from flava.config.finetune import FinetuneConfig

log = logging.getLogger("flava")


LightningPrecision = Literal["32-true", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]
"""The names Lightning uses for the precisions a run may take."""

LIGHTNING_NAMES: dict[str, LightningPrecision] = {
    "32": "32-true",
    "64": "64-true",
    "bf16": "bf16-mixed",
    "16": "16-mixed",
    **{name: name for name in get_args(LightningPrecision)},
}
"""Every spelling of a resolved precision -> the name Lightning uses (it warns about the short
ones)."""

KEY = "training.lightning.precision"


def low_precision_kind(precision: str) -> str | None:
    """bf16 or fp16 for a half-precision setting, None for 32 / 64 / auto."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    return None


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """CPU feature flags: /proc/cpuinfo (x86 flags, Arm Features) or macOS sysctl."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() in ("flags", "features"):
                return frozenset(value.split())
        return frozenset()
    if sys.platform == "darwin" and platform.machine() == "arm64":
        flags = set()
        for feature, flag in (("FEAT_BF16", "bf16"), ("FEAT_FP16", "fphp")):
            cmd = ["sysctl", "-n", f"hw.optional.arm.{feature}"]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            if out.strip() == "1":
                flags.add(flag)
        return frozenset(flags)
    return frozenset()


def cpu_features() -> tuple[str, frozenset[str]]:
    """(PyTorch's CPU capability such as AVX2 or AVX512, the low precisions it has native
    matrix units for: a subset of {bf16, fp16})."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    native = set()
    if flags & {"avx512_bf16", "amx_bf16", "bf16"}:  # x86 AVX512-BF16 / AMX, Arm BF16
        native.add("bf16")
    if flags & {"avx512_fp16", "amx_fp16"} or {"fphp", "asimdhp"} <= flags:
        native.add("fp16")
    return capability, frozenset(native)


def cuda_features(strategy: str) -> tuple[str, bool | None]:
    """(name of CUDA device 0, whether it has native bf16; None: unknown); asked in a child
    process under fork-based strategies so that CUDA is not initialised before Lightning forks."""
    if "fork" in strategy or "notebook" in strategy:
        code = (
            "import torch; p = torch.cuda.get_device_properties(0); "
            "print(int(p.major >= 8 or bool(torch.version.hip)), p.name)"
        )
        try:
            cmd = [sys.executable, "-c", code]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        flag, _, name = out.strip().partition(" ")
        return name or "CUDA device", {"1": True, "0": False}.get(flag)
    if not torch.cuda.is_available():  # a GPU run configured here: Lightning says so later
        return "no CUDA device", None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.major >= 8 or bool(torch.version.hip)


def target_device(lc: LightningConfig) -> str:
    """The device kind the run will train on: cuda, cpu, mps, or another accelerator name."""
    name = "gpu" if lc.gpus is not None else str(lc.accelerator).lower()
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu" if name == "auto" else "cuda"
    return name


def _cpu_choice(precision: str, kind: str | None, force: bool) -> str:
    """The resolved precision on a CPU, or a ConfigError when it does not fit."""
    capability, native = cpu_features()
    if precision == "auto":
        return "bf16-mixed" if "bf16" in native else "32"
    if kind is None or kind in native or force:
        return precision
    emulated = kind == "bf16" and capability.startswith("AVX512")
    speed = "no faster than" if emulated else "about 75x slower than"
    raise ConfigError(
        f"{KEY}={precision}: this CPU ({capability}, no native {kind}) runs {kind} matrix "
        f"products {speed} fp32; use precision=32 or auto, or "
        "training.lightning.force_precision=true"
    )


def _cuda_choice(precision: str, kind: str | None, force: bool, strategy: str) -> str:
    """The resolved precision on a CUDA GPU, or a ConfigError for bf16 without native bf16."""
    if precision != "auto" and (kind != "bf16" or force):
        return precision
    name, bf16 = cuda_features(strategy)
    if precision == "auto":
        return "bf16-mixed" if bf16 else "16-mixed"
    if bf16 is not False:
        return precision
    raise ConfigError(
        f"{KEY}={precision}: this GPU ({name}) has no native bf16; use precision=16-mixed or "
        "auto, or training.lightning.force_precision=true"
    )


def check_precision(lc: LightningConfig) -> str:
    """training.lightning.precision with `auto` resolved; ConfigError when it does not fit the
    hardware (unless training.lightning.force_precision)."""
    precision = str(lc.precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"{KEY}={precision!r} is invalid: must be one of {', '.join(PRECISIONS)}")
    kind, force = low_precision_kind(precision), bool(lc.force_precision)
    device = target_device(lc)
    if device == "cpu":
        return _cpu_choice(precision, kind, force)
    if device == "cuda":
        return _cuda_choice(precision, kind, force, str(lc.strategy))
    return "32" if precision == "auto" else precision


def resolve_precision(cfg: RunConfig | FinetuneConfig) -> RunConfig | FinetuneConfig:
    """Check training.lightning.precision against the hardware and write the resolved value
    back (before the run directory's config.yaml is saved); returns `cfg`."""
    lc = cfg.training.lightning
    chosen = check_precision(lc)
    if lc.precision == "auto":
        log.info("%s=auto: %s on %s", KEY, chosen, target_device(lc))
        lc.precision = Precision(chosen)
    return cfg


COMPILE_MIN_STEPS = 500
"""Fewest optimizer steps for which `training.compile=auto` compiles: a compile's warm-up (6 to
26 s more in the first step for flava_full on 2 Zen 4 cores) against its saving (0.2 to 0.7 s a
bf16 step there, about 1.9 s on AMX) is paid back well within them."""

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""x86 flags of the CPUs where compiled bf16 layers were measured faster: AVX512-BF16 (Zen 4:
0.93x and 0.98x the eager step) and AMX (Sapphire Rapids: 0.76x)."""


def compile_choice(precision: str, device: str, max_steps: int) -> tuple[bool, str]:
    """(whether `training.compile=auto` compiles, why): half precision on a GPU, or bf16 on an
    x86 CPU with AVX512-BF16 or AMX (where matrix products are fast, the step's elementwise work,
    which compiling fuses, is a large share), in a run long enough to pay for the compile.
    Measured not to pay: fp32 on CPU (1.06x slower for the tiny preset, the demo's)."""
    kind = low_precision_kind(precision)
    if 0 < max_steps < COMPILE_MIN_STEPS:
        return False, f"{max_steps} steps do not pay back the compile (< {COMPILE_MIN_STEPS})"
    if kind is None:
        return False, f"precision {precision}: compiled layers were not faster in fp32"
    if device == "cuda":
        return True, f"{kind} on a GPU"
    capability, native = cpu_features()
    units = sorted(BF16_CPU_FLAGS & _cpu_flags())
    if device == "cpu" and kind == "bf16" and units:
        return True, f"bf16 on a CPU with {' and '.join(units)} ({capability})"
    if device == "cpu" and kind in native:
        return False, f"{kind} on this CPU ({capability}): compiled layers not measured here"
    return False, f"{kind} without native {kind} units on {device}"


def resolve_compile(cfg: RunConfig) -> RunConfig:
    """Resolve `training.compile=auto` for the run's (resolved) precision, device and length,
    log the choice and write it back (before config.yaml is saved); returns `cfg`."""
    t = cfg.training
    if t.compile == "auto":
        lc = t.lightning
        chosen, why = compile_choice(str(lc.precision), target_device(lc), int(lc.max_steps))
        log.info("training.compile=auto: %s (%s)", str(chosen).lower(), why)
        t.compile = chosen
    return cfg


def lightning_precision(lc: LightningConfig) -> LightningPrecision:
    """The `precision` argument of lightning.Trainer (auto resolved, short names expanded)."""
    return LIGHTNING_NAMES[check_precision(lc)]
