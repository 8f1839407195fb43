"""The optimiser of every run: AdamW (paper: betas 0.9 / 0.999) with warm-up then decay.

Weight decay applies to every parameter (`training.weight_decay_groups=all`, the original
release's) or skips 1-D tensors and the image encoder's tokens and positions (`matrices`, see
`decay_groups`). AdamW runs as PyTorch's
fused kernel where it has one (CUDA; CPU from PyTorch 2.4): on a 2-core CPU the per-tensor
loop took about 0.2 s of a 0.5 s `tiny` step, the fused kernel about a sixth of that. Under
`16-mixed` (a loss scaler) it runs unfused; gradients are clipped by `clip_gradients`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from flava.config import ConfigError, TrainingConfig

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

NO_DECAY_SUFFIXES = ("cls_token", "mask_token", "pos_embed")


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine / linear decay to min_ratio, or constant."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return min_ratio + (1 - min_ratio) * (1 - progress)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def fused_supported(device: torch.device) -> bool:
    """Whether AdamW has a fused kernel for parameters on `device`."""
    if device.type == "cuda":
        return True
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return device.type == "cpu" and version >= (2, 4)


def decay_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    groups: str = "all",
) -> tuple[list[tuple[str, torch.nn.Parameter]], list[tuple[str, torch.nn.Parameter]]]:
    """(decayed, not decayed) trainable (name, parameter) pairs, in the given order. `groups`:
    "all" decays every one; "matrices" skips 1-D tensors (biases, norm weights, the logit
    scale) and names ending in `NO_DECAY_SUFFIXES` (the image / multimodal class tokens, the
    image mask token and position embeddings; the text embeddings are tables, and decayed)."""
    decay: list[tuple[str, torch.nn.Parameter]] = []
    no_decay: list[tuple[str, torch.nn.Parameter]] = []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        skip = groups == "matrices" and (p.ndim < 2 or name.endswith(NO_DECAY_SUFFIXES))
        (no_decay if skip else decay).append((name, p))
    return decay, no_decay


def multiplier_of(name: str, multipliers: dict[str, float]) -> float:
    """The learning-rate multiplier of parameter `name`: that of the longest prefix naming it
    or a module above it (`flava.image_encoder` covers `flava.image_encoder.layers.0.mlp...`)."""
    best, value = -1, 1.0
    for prefix, m in multipliers.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, value = len(prefix), float(m)
    return value


def check_multipliers(names: Iterable[str], multipliers: dict[str, float]) -> None:
    """One line (ConfigError) for a `training.lr_multipliers` prefix that names no parameter."""
    names = list(names)
    for prefix in multipliers:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(
                f"training.lr_multipliers: {prefix!r} names no parameter of the model; "
                f"prefixes of its parameter names are e.g. {', '.join(tops)}"
            )


def param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    t: TrainingConfig,
) -> list[tuple[dict[str, Any], list[tuple[str, torch.nn.Parameter]]]]:
    """AdamW's parameter groups as (options, named parameters), in the optimizer's order: per
    learning-rate multiplier (1 first, then ascending), the decayed then the undecayed ones."""
    named = list(named_parameters)
    multipliers = dict(t.lr_multipliers)
    check_multipliers((n for n, _ in named), multipliers)
    by_multiplier: dict[float, list[tuple[str, torch.nn.Parameter]]] = {}
    for name, p in named:
        by_multiplier.setdefault(multiplier_of(name, multipliers), []).append((name, p))
    groups = []
    for m in sorted(by_multiplier, key=lambda v: (v != 1.0, v)):
        decay, no_decay = decay_groups(by_multiplier[m], str(t.weight_decay_groups))
        lr = {} if m == 1.0 else {"lr": t.learning_rate * m}
        for params, wd in ((decay, t.adam_weight_decay), (no_decay, 0.0)):
            if params or m == 1.0:  # (the two groups of a run without multipliers, as before)
                groups.append(({"weight_decay": wd, **lr}, params))
    return groups


def adamw_with_schedule(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    t: TrainingConfig,
    device: torch.device,
    max_steps: int | None,
) -> OptimizerLRSchedulerConfig:
    """Lightning's `configure_optimizers` answer: AdamW over the trainable parameters (per
    `training.lr_multipliers`) and the per-step learning-rate schedule of `training.*` (length
    `lr_decay_steps` or `max_steps`)."""
    groups = param_groups(named_parameters, t)
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in params], **options} for options, params in groups],
        lr=t.learning_rate,
        betas=(t.adam_betas[0], t.adam_betas[1]),
        eps=t.adam_eps,
        # a fused step unscales fp16 gradients itself: Lightning could not clip them first
        fused=(fused_supported(device) and str(t.lightning.precision) != "16-mixed") or None,
    )
    total = t.lr_decay_steps or max_steps
    total = total if total and total > 0 else 10**9
    schedule = lr_lambda(t.warmup_steps, total, t.lr_schedule, t.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def clip_gradients(
    module: Any, optimizer: Any, value: float | None, algorithm: str | None = None
) -> None:
    """`configure_gradient_clipping` of our LightningModules: Lightning's clipping, except that
    under fp32 / bf16 (no loss scaler, so nothing to unscale) the fused AdamW is allowed, which
    Lightning's mixed-precision plugin refuses for any fused optimizer. Sharded (FSDP2)
    gradients are clipped by their global norm."""
    if not value:
        return
    if getattr(module.trainer.precision_plugin, "scaler", None) is not None:
        module.clip_gradients(optimizer, value, algorithm)  # fp16: unscale, then clip
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    else:
        torch.nn.utils.clip_grad_norm_(params, value)
