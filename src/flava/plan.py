"""`python -m flava.plan`: memory per GPU, FLOPs and step time of a pretraining run, on paper.

    python -m flava.plan --preset 10b --gpus 64 --gpu-memory 80 --batch-size 16
    python -m flava.plan --preset flava_full --gpus 8 --batch-size 64 --precision 32 --json p.json
    python -m flava.plan --preset flava_full --gpus 16 --batch-size 128 --interconnect 25

Everything is analytic (nothing is built or allocated), for the largest step kind, the
image-text pair step: global contrastive on the unmasked pair, ITM + MMM on the masked pair,
MIM targets from a forward pass of the DALL-E codebook. `--batch-size` is per GPU.

Memory per GPU, by strategy (Lightning's, as `flava.train` sets them up):

- ddp: every GPU holds the whole model. fp32 (`--precision 32`): parameters 4 B/param,
  gradients 4, AdamW moments 8. bf16-mixed: bf16 working copies of the weights 2 B/param
  (autocast's cast cache, alive for the step), fp32 gradients 4, optimiser = fp32 moments 8 +
  the fp32 master parameters 4. With more than one GPU DDP adds its gradient buckets (4 B/param).
- fsdp (FSDP2 as `flava.training.sharding.shard` applies it: one unit per transformer layer,
  per encoder (its embeddings, final norm, pooler), per pretraining head, and the root =
  projections + logit scale): fp32 parameters 4 B/param, fp32 gradients 4 and AdamW's two fp32
  moments 8 of the trainable parameters, each divided by the GPU count (the fp32 shards are the
  master weights under bf16-mixed too); the frozen DALL-E codebook replicated, full size in fp32,
  no gradient, no optimiser state. Buffers are the unsharded units (bf16 under bf16-mixed, fp32
  under 32): the largest unit's parameters (the text encoder's own with its token embeddings or
  the MMM text head with its vocabulary decoder, about the same size; an encoder's unit stays
  gathered around its layers) + two of the largest layer (current and prefetched: FSDP2's
  reshard_after_forward=True and backward prefetch of one unit); the largest unit's unsharded
  gradient (compute dtype) and the fp32 reduce-scatter input it is copied into (both for a
  moment); the root's parameters and gradient, gathered for the whole step (FSDP2 keeps the root
  unsharded from forward to backward). All summed as if they coexisted with every gradient shard
  and the activations: an upper bound of the peak (measured on 2 CPU processes, fp32: within 3%
  for flava_full at batch 2, 16% above for tiny at batch 8; tests/test_plan.py). Ignored: the
  padding of shards to a multiple of W, and the small image encoder unit (kept gathered through
  the backward, as the text one, since their inputs need no gradient).
- fsdp + activation checkpointing: as fsdp, but each layer keeps only its input; one layer's
  activations are recomputed at a time during the backward pass (and its forward FLOPs again).

Activations are counted per token and layer from what autograd saves in `flava.model.transformer`
(fp32: 24 B x width + 4 B x MLP width; bf16-mixed: 16 + 2), plus embeddings, final norms and the
heads' log-probabilities on masked positions; the step's peak is that or, if larger, the
codebook's transient feature maps (the codebook runs before any encoder keeps activations). FLOPs
count matrix products (2 per multiply-add) as `torch.utils.flop_counter.FlopCounterMode` does:
backward = 2x forward for linear layers, 2.5x for attention (flash-style recompute), the
codebook forward only. Compute time = FLOPs / (MFU x peak).

Communication: bytes each process sends (and receives) per step with ring collectives, W
processes, as counted on torch's DDP and FSDP2 (`fully_shard`, as `flava.training.sharding`
applies it) with 2 processes on gloo (tests/test_plan.py):

- ddp: one all-reduce of the fp32 gradients of every trainable parameter (DDP reduces whole
  buckets, the parameters a pair step leaves unused included; fp32 under bf16-mixed too; the
  frozen codebook has none): 2 (W-1)/W x 4 B/param.
- fsdp: all-gathers in the compute dtype (bf16 under bf16-mixed, fp32 under 32), (W-1)/W of each
  unit's parameters per gather; reduce-scatters in fp32, (W-1)/W of the parameters that have a
  gradient. A layer is gathered for each forward pass through it and again for the backward of
  each (resharded after forward and after each backward use; the pair step runs the image and
  the text encoder twice, unmasked and masked), its gradient reduced once. An encoder's own unit
  (embeddings, final norm, pooler) is gathered per forward pass and once for the backward; its
  pooler has no gradient in a pair step. The ITM and MMM heads: a gather in forward and one in
  backward. The root (projections, logit scale) stays gathered from forward to backward: one.
  Not communicated: the frozen codebook (replicated, outside sharding) and the MIM and MLM heads
  (unimodal objectives, unused by a pair step). FSDP2's padding of each parameter's first
  dimension to a multiple of W is ignored (the image encoder's [1, N, D] position embedding, CLS
  and mask tokens gather W rows). Activation checkpointing adds no gather: the layer's
  pre-backward hook gathers it before autograd recomputes it, and the recomputed forward skips
  FSDP's hooks.
- both: the contrastive loss all-gathers the fp32 image and text embeddings [B, P] and
  reduce-scatters their gradients: 4 x (W-1) x B x P x 4 B. Scalar all-reduces are ignored.

Communication time = bytes / `--interconnect` (GB/s per process, bus bandwidth of the slowest
link the ring crosses: ~25 for 200 Gb/s InfiniBand per GPU between nodes, ~450 for NVLink
within one H100 node). Step time = max(compute, communication): it assumes DDP's bucketed
all-reduce and FSDP's prefetched gathers overlap compute completely; the step is
communication-bound when communication takes longer. With one process nothing is communicated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flava.model.codebook import DOWNSAMPLE, GROUP_WIDTHS
from flava.model.config import CodebookConfig, EncoderConfig, FlavaConfig
from flava.model.presets import PRESET_NAMES, preset

GIB = 2**30
STRATEGIES = ("ddp", "fsdp", "fsdp + activation checkpointing")
PRECISIONS = ("32", "bf16-mixed")
# Saved-for-backward bytes per token and layer: (per hidden unit, per MLP unit), measured with
# saved_tensors_hooks on flava.model.transformer.Layer (tests/test_plan.py re-checks them);
# autocast's bf16 weight copies are not per token: they are counted with the parameters.
LAYER_BYTES = {"32": (24, 4), "bf16-mixed": (16, 2)}
EXTRA_STATES_PER_PASS = 3  # embedding / final-norm tensors of width D kept per encoder pass
INTERCONNECT_GBPS = 25.0  # GB/s per process: 200 Gb/s InfiniBand per GPU between nodes
NVLINK_GBPS = 450.0  # GB/s per process (bus bandwidth) within one H100 NVLink node


@dataclass
class Workload:
    """One pair step per GPU: batch, padded text length, masked patches and tokens per sample."""

    batch_size: int
    text_length: int = 77
    masked_patches: int | None = None  # None: 75 of 196 patches, scaled to the grid
    mlm_probability: float = 0.15

    def patches_masked(self, config: FlavaConfig) -> int:
        """Masked patches per image."""
        n = config.image.grid_size**2
        return self.masked_patches if self.masked_patches is not None else round(75 * n / 196)

    def tokens_masked(self) -> int:
        """Masked text tokens per sample (special tokens excluded)."""
        return round(self.mlm_probability * max(0, self.text_length - 2))


# ----------------------------------------------------------------------------- parameters


def layer_parameters(c: EncoderConfig) -> int:
    """Parameters of one transformer layer."""
    d, f = c.hidden_size, c.intermediate_size
    return 4 * d * d + 2 * d * f + (6 + 3 * int(c.qkv_bias)) * d + f


def _encoder_base(c: EncoderConfig) -> int:
    """Layers + final LayerNorm + pooler."""
    d = c.hidden_size
    return c.num_hidden_layers * layer_parameters(c) + 2 * d + d * d + d


def _head(d: int, vocab: int) -> int:
    """MaskedPredictionHead: dense + LayerNorm + decoder."""
    return d * d + d + 2 * d + d * vocab + vocab


def codebook_convs(c: CodebookConfig) -> list[tuple[int, int, int, int]]:
    """(in, out, kernel, downsampling of the resolution) of every codebook convolution."""
    hid, convs = c.hidden_size, [(c.input_channels, c.hidden_size, 7, 1)]
    for g, (w_in, w_out) in enumerate(GROUP_WIDTHS):
        scale = 2**g
        for i in range(c.num_blocks_per_group):
            n_in, n_out = (w_in if i == 0 else w_out) * hid, w_out * hid
            n_hid = n_out // 4
            if n_in != n_out:
                convs.append((n_in, n_out, 1, scale))
            convs += [(n_in, n_hid, 3, scale), (n_hid, n_hid, 3, scale)]
            convs += [(n_hid, n_hid, 3, scale), (n_hid, n_out, 1, scale)]
    convs.append((8 * hid, c.vocab_size, 1, DOWNSAMPLE))
    return convs


def parameter_counts(config: FlavaConfig) -> dict[str, int]:
    """Exact parameter counts of FlavaForPreTraining (with the codebook) by part."""
    i, t, m = config.image, config.text, config.multimodal
    di, dt, dm, p = i.hidden_size, t.hidden_size, m.hidden_size, config.projection_dim
    image = _encoder_base(i) + i.num_channels * i.patch_size**2 * di + 3 * di  # bias, CLS, mask
    image += (i.grid_size**2 + 1) * di
    text = _encoder_base(t) + (t.vocab_size + t.max_position_embeddings + t.type_vocab_size) * dt
    text += 2 * dt
    multimodal = _encoder_base(m) + dm
    projections = (di + 1) * p + (dt + 1) * p + (di + 1) * dm + (dt + 1) * dm + 1
    heads = _head(di, i.vocab_size) + _head(dt, t.vocab_size)
    heads += _head(dm, i.vocab_size) + _head(dm, t.vocab_size) + dm * dm + dm + 2 * dm + 2
    codebook = sum(a * b * k * k + b for a, b, k, _ in codebook_convs(config.codebook))
    trainable = image + text + multimodal + projections + heads
    layers = sum(c.num_hidden_layers * layer_parameters(c) for c in (i, t, m))
    return {
        "image_encoder": image,
        "text_encoder": text,
        "multimodal_encoder": multimodal,
        "projections": projections,
        "heads": heads,
        "codebook": codebook,
        "trainable": trainable,
        "total": trainable + codebook,
        "in_layers": layers,
        "largest_layer": max(layer_parameters(c) for c in (i, t, m)),
    }


# ----------------------------------------------------------------------------- FLOPs


def _passes(config: FlavaConfig, w: Workload) -> list[tuple[str, EncoderConfig, int]]:
    """(name, encoder config, sequence length) of every encoder pass of a pair step."""
    n_img = config.image.grid_size**2 + 1
    return [
        ("image", config.image, n_img),
        ("image_masked", config.image, n_img),
        ("text", config.text, w.text_length),
        ("text_masked", config.text, w.text_length),
        ("multimodal", config.multimodal, 1 + n_img + w.text_length),
    ]


def layer_stack_flops(c: EncoderConfig, length: int, batch: int = 1) -> dict[str, float]:
    """Forward FLOPs of an encoder's layers on `batch` sequences of `length` tokens, by part."""
    d, f, tokens = c.hidden_size, c.intermediate_size, batch * length
    return {
        "linear": c.num_hidden_layers * 2 * tokens * (4 * d * d + 2 * d * f),
        "attention": c.num_hidden_layers * 4 * batch * length * length * d,
    }


def encoder_forward_flops(c: EncoderConfig, length: int, batch: int = 1) -> float:
    """Forward FLOPs of an encoder's layers on `batch` sequences of `length` tokens."""
    return sum(layer_stack_flops(c, length, batch).values())


def step_flops(config: FlavaConfig, w: Workload) -> dict[str, float]:
    """FLOPs of one pair step per GPU (FlopCounterMode conventions), by part."""
    b = w.batch_size
    i, t, m = config.image, config.text, config.multimodal
    di, dt, dm, p = i.hidden_size, t.hidden_size, m.hidden_size, config.projection_dim
    fwd = {"linear": 0.0, "attention": 0.0}
    for _, c, n in _passes(config, w):
        for part, flops in layer_stack_flops(c, n, b).items():
            fwd[part] += flops
    n_img = i.grid_size**2
    patch = 2 * 2 * b * n_img * i.num_channels * i.patch_size**2 * di  # two image passes
    mi, mt = b * w.patches_masked(config), b * w.tokens_masked()
    other = 2 * b * (di + dt) * p  # contrastive projections
    other += 2 * b * (1 + n_img) * di * dm + 2 * b * w.text_length * dt * dm  # to-mm projections
    other += 2 * b * (dm * dm + 2 * dm)  # ITM
    other += 2 * mi * (dm * dm + dm * i.vocab_size) + 2 * mt * (dm * dm + dm * t.vocab_size)
    other += 2 * 2 * b * b * p  # contrastive logits, both directions
    side = DOWNSAMPLE * i.grid_size
    codebook = sum(
        2 * b * a * o * k * k * (side // s) ** 2 for a, o, k, s in codebook_convs(config.codebook)
    )
    forward = fwd["linear"] + fwd["attention"] + patch + other
    backward = 2 * (fwd["linear"] + other) + 2.5 * fwd["attention"] + patch
    recompute = fwd["linear"] + fwd["attention"]  # activation checkpointing: layers again
    return {
        "forward": forward,
        "backward": backward,
        "codebook_forward": codebook,
        "total": forward + backward + codebook,
        "attention_forward": fwd["attention"],
        "recompute_with_checkpointing": recompute,
    }


# ----------------------------------------------------------------------------- memory


def activation_bytes(
    config: FlavaConfig, w: Workload, precision: str, checkpointing: bool
) -> dict[str, float]:
    """Activation memory of one pair step at the start of the backward pass, by part."""
    per_d, per_f = LAYER_BYTES[precision]
    b, out = w.batch_size, {"layers": 0.0, "other": 0.0}
    largest_layer = 0.0
    for _, c, n in _passes(config, w):
        d, f, tokens = c.hidden_size, c.intermediate_size, b * n
        full = tokens * (per_d * d + per_f * f)
        largest_layer = max(largest_layer, full)
        kept = tokens * d * 4 if checkpointing else full  # a checkpointed layer keeps its input
        out["layers"] += c.num_hidden_layers * kept
        out["other"] += EXTRA_STATES_PER_PASS * tokens * d * 4
    if checkpointing:
        out["recomputed_layer"] = largest_layer
    i, t, m = config.image, config.text, config.multimodal
    mm_tokens = b * (2 + i.grid_size**2 + w.text_length)
    out["other"] += mm_tokens * m.hidden_size * 4  # matched-pair copy of the fused sequence
    out["other"] += 2 * b * i.num_channels * i.image_size**2 * 4  # pixels kept by patch conv
    s = 4 if precision == "32" else 2
    mi, mt = b * w.patches_masked(config), b * w.tokens_masked()
    heads = mi * (m.hidden_size * (4 + 3 * s) + 4 * i.vocab_size)
    heads += mt * (m.hidden_size * (4 + 3 * s) + 4 * t.vocab_size)
    out["heads"] = heads
    out["transient"] = max(mi * i.vocab_size, mt * t.vocab_size) * s  # logits before the loss
    cb = config.codebook
    side = DOWNSAMPLE * i.grid_size
    out["codebook_transient"] = 4 * b * cb.hidden_size * side * side * 4
    kept = out["layers"] + out["other"] + heads + out.get("recomputed_layer", 0)
    # The codebook's targets are computed before any encoder runs (objectives.pretraining).
    out["total"] = max(kept + out["transient"], out["codebook_transient"])
    return out


def _check(precision: str, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")


def memory_per_gpu(
    config: FlavaConfig, w: Workload, gpus: int, precision: str, strategy: str
) -> dict[str, float]:
    """Bytes per GPU: parameters, gradients, optimiser, buffers, activations, total."""
    _check(precision, strategy)
    counts = parameter_counts(config)
    trainable, codebook = counts["trainable"], counts["codebook"]
    mixed = precision == "bf16-mixed"
    work = 2 if mixed else 4  # bytes of the weights the matrix products read
    if strategy == "ddp":
        params = work * trainable + 4 * codebook
        grads = 4 * trainable
        optimizer = 8 * trainable + (4 * trainable if mixed else 0)
        buffers = 4 * trainable if gpus > 1 else 0  # DDP gradient buckets
    else:
        params = 4 * trainable / gpus + 4 * codebook  # fp32 shards; codebook replicated
        grads = 4 * trainable / gpus
        optimizer = 8 * trainable / gpus
        buffers = sum(fsdp_buffers(config, w, precision).values())
    checkpointing = strategy.endswith("checkpointing")
    act = activation_bytes(config, w, precision, checkpointing)
    total = params + grads + optimizer + buffers + act["total"]
    return {
        "parameters": params,
        "gradients": grads,
        "optimizer": optimizer,
        "buffers": buffers,
        "activations": act["total"],
        "total": total,
    }


def largest_unit(config: FlavaConfig, w: Workload) -> int:
    """Parameters of the largest FSDP2 unit a pair step gathers, layers and root excluded."""
    units = fsdp_units(config, w)
    return max(n for name, n, *_ in units if ".layer" not in name and name != "root")


def fsdp_buffers(config: FlavaConfig, w: Workload, precision: str) -> dict[str, float]:
    """Bytes of the unsharded FSDP2 buffers per process (see the module docstring), by part."""
    counts = parameter_counts(config)
    work = 2 if precision == "bf16-mixed" else 4  # FSDP2 gathers in the compute dtype
    unit, layer = largest_unit(config, w), counts["largest_layer"]
    return {
        "gathered_units": work * (unit + 2 * layer),  # largest unit + current, prefetched layer
        "unit_gradient": (work + 4) * unit,  # autograd's gradient + fp32 reduce-scatter input
        "root": 2 * work * counts["projections"],  # gathered with its gradient all step
    }


def max_batch(
    config: FlavaConfig, w: Workload, gpus: int, precision: str, strategy: str, budget: float
) -> int:
    """Largest per-GPU batch whose memory fits `budget` bytes (0 if not even 1 fits)."""
    fits = 0
    low, high = 1, 1
    while _fits(config, w, high, gpus, precision, strategy, budget):
        fits, low, high = high, high, high * 2
        if high > 1 << 20:
            return fits
    while low < high - 1 and fits:
        mid = (low + high) // 2
        if _fits(config, w, mid, gpus, precision, strategy, budget):
            fits, low = mid, mid
        else:
            high = mid
    return fits


def _fits(
    config: FlavaConfig,
    w: Workload,
    batch: int,
    gpus: int,
    precision: str,
    strategy: str,
    budget: float,
) -> bool:
    trial = Workload(batch, w.text_length, w.masked_patches, w.mlm_probability)
    return memory_per_gpu(config, trial, gpus, precision, strategy)["total"] <= budget


# ----------------------------------------------------------------------------- communication


def fsdp_units(config: FlavaConfig, w: Workload) -> list[tuple[str, int, int, int]]:
    """(unit, parameters, all-gathers per pair step, parameters reduce-scattered) of every FSDP2
    unit (`flava.training.sharding.shard`) the pair step communicates for."""
    counts, passes = parameter_counts(config), [c for _, c, _ in _passes(config, w)]
    units = []
    for name, c in (
        ("image", config.image),
        ("text", config.text),
        ("multimodal", config.multimodal),
    ):
        p, layer = passes.count(c), layer_parameters(c)
        d = c.hidden_size
        own = counts[f"{name}_encoder"] - c.num_hidden_layers * layer  # embeddings, norm, pooler
        for k in range(c.num_hidden_layers):  # resharded after every forward and backward use
            units.append((f"{name}.layer{k}", layer, 2 * p, layer))
        # once per forward pass and once for the backward (image / text: their inputs need no
        # gradient, so it stays gathered until the end); the pair step leaves the pooler unused
        units.append((f"{name}_encoder", own, p + 1, own - d * d - d))
    m, i, t = config.multimodal, config.image, config.text
    dm = m.hidden_size
    for name, size in (
        ("mmm_image_head", _head(dm, i.vocab_size)),
        ("mmm_text_head", _head(dm, t.vocab_size)),
        ("itm_head", dm * dm + dm + 2 * dm + 2),
    ):
        units.append((name, size, 2, size))
    # the root (projections, logit scale) stays gathered from forward to backward
    units.append(("root", counts["projections"], 1, counts["projections"]))
    return units


def communication_bytes(
    config: FlavaConfig, w: Workload, gpus: int, precision: str, strategy: str
) -> dict[str, float]:
    """Bytes each process sends per pair step (ring collectives), by collective, and total."""
    _check(precision, strategy)
    share = (gpus - 1) / gpus
    out = {"all_reduce": 0.0, "all_gather": 0.0, "reduce_scatter": 0.0}
    if strategy == "ddp":  # every bucket, unused parameters' zeros included; fp32 gradients
        out["all_reduce"] = 2 * share * 4 * parameter_counts(config)["trainable"]
    else:  # FSDP2: gathers in the compute dtype, reduce-scatters in fp32
        units = fsdp_units(config, w)
        gather = 2 if precision == "bf16-mixed" else 4
        out["all_gather"] = share * gather * sum(n * k for _, n, k, _ in units)
        out["reduce_scatter"] = share * 4 * sum(r for *_, r in units)
    # fp32 image + text embeddings [B, P]: all-gathered, gradients reduce-scattered
    out["contrastive"] = 2 * 2 * (gpus - 1) * w.batch_size * config.projection_dim * 4
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------- the plan


def _strategy_plan(
    config: FlavaConfig,
    w: Workload,
    gpus: int,
    precision: str,
    strategy: str,
    flops: dict[str, float],
    rate: float,
    budget: float,
    interconnect_gbps: float,
) -> dict[str, Any]:
    """Memory, communication and step time of one strategy (`rate`: achieved FLOP/s)."""
    mem = memory_per_gpu(config, w, gpus, precision, strategy)
    work = flops["total"]
    if strategy.endswith("checkpointing"):
        work += flops["recompute_with_checkpointing"]
    compute = work / rate
    comm = communication_bytes(config, w, gpus, precision, strategy)
    comm_s = comm["total"] / (interconnect_gbps * 1e9)
    step = max(compute, comm_s)  # communication overlaps compute
    return {
        **mem,
        **({"buffers_by_part": fsdp_buffers(config, w, precision)} if strategy != "ddp" else {}),
        "fits": mem["total"] <= budget,
        "compute_seconds": compute,
        "communication_bytes_per_step": comm["total"],
        "communication_bytes_by_collective": {k: v for k, v in comm.items() if k != "total"},
        "communication_seconds": comm_s,
        "bound": "communication" if comm_s > compute else "compute",
        "step_time_s": step,
        "samples_per_s": gpus * w.batch_size / step,
        "max_batch_per_gpu": max_batch(config, w, gpus, precision, strategy, budget),
    }


def plan(
    config: FlavaConfig,
    w: Workload,
    gpus: int,
    gpu_memory_gib: float,
    precision: str = "bf16-mixed",
    mfu: float = 0.4,
    gpu_tflops: float = 989.0,
    reserve_gib: float = 3.0,
    interconnect_gbps: float = INTERCONNECT_GBPS,
) -> dict[str, Any]:
    """Memory, communication and step time per strategy, FLOPs and the recommended (smallest
    fitting) strategy; `interconnect_gbps` is the bus bandwidth per process in GB/s."""
    if not interconnect_gbps > 0:
        raise ValueError(f"interconnect_gbps must be positive, not {interconnect_gbps}")
    budget = (gpu_memory_gib - reserve_gib) * GIB
    flops = step_flops(config, w)
    rate = mfu * gpu_tflops * 1e12
    strategies = {
        strategy: _strategy_plan(
            config, w, gpus, precision, strategy, flops, rate, budget, interconnect_gbps
        )
        for strategy in STRATEGIES
    }
    fitting = [s for s in STRATEGIES if strategies[s]["fits"]]
    return {
        "workload": asdict(w),
        "masked_patches": w.patches_masked(config),
        "masked_tokens": w.tokens_masked(),
        "gpus": gpus,
        "gpu_memory_gib": gpu_memory_gib,
        "reserve_gib": reserve_gib,
        "precision": precision,
        "mfu": mfu,
        "gpu_tflops": gpu_tflops,
        "interconnect_gbps": interconnect_gbps,
        "step_time_model": "max(compute_seconds, communication_seconds): full overlap",
        "parameters": parameter_counts(config),
        "fsdp_largest_unit": largest_unit(config, w),
        "flops_per_gpu": flops,
        "strategies": strategies,
        "recommendation": fitting[0] if fitting else None,
    }


def format_plan(result: dict[str, Any], name: str) -> str:
    """The plan as printed by the command line."""
    lines = _format_summary(result, name)
    lines += ["", *_format_memory(result), ""]
    lines += _format_step_time(result)
    lines.append(_format_recommendation(result))
    return "\n".join(lines)


def _format_summary(result: dict[str, Any], name: str) -> list[str]:
    """The plan's first lines: the set-up, the parameter counts and the FLOPs per step."""
    w, counts, flops = result["workload"], result["parameters"], result["flops_per_gpu"]
    gpus = result["gpus"]
    tf = {k: v / 1e12 for k, v in flops.items()}
    return [
        f"FLAVA plan: preset {name}, {gpus} GPU(s) x {result['gpu_memory_gib']:g} GiB, batch "
        f"{w['batch_size']} per GPU (global {gpus * w['batch_size']}), {result['precision']}, "
        f"pair step, text {w['text_length']} tokens, {result['masked_patches']} masked patches",
        f"parameters: {counts['trainable'] / 1e9:.3f} B trainable (image "
        f"{counts['image_encoder'] / 1e6:.1f} M, text {counts['text_encoder'] / 1e6:.1f} M, "
        f"multimodal {counts['multimodal_encoder'] / 1e6:.1f} M, heads + projections "
        f"{(counts['heads'] + counts['projections']) / 1e6:.1f} M), codebook "
        f"{counts['codebook'] / 1e6:.1f} M frozen",
        f"FLOPs per step per GPU: {tf['total']:.2f} TFLOP (forward {tf['forward']:.2f}, backward "
        f"{tf['backward']:.2f}, codebook {tf['codebook_forward']:.2f}); "
        f"+{tf['recompute_with_checkpointing']:.2f} recomputed with activation checkpointing; "
        f"global {gpus * tf['total'] / 1e3:.3f} PFLOP",
    ]


def _format_memory(result: dict[str, Any]) -> list[str]:
    """The memory table: each strategy's parts per GPU, whether it fits, its largest batch."""
    counts, gpus = result["parameters"], result["gpus"]
    budget = result["gpu_memory_gib"] - result["reserve_gib"]
    head = (
        f"{'memory per GPU (GiB)':<33}{'params':>8}{'grads':>8}{'optim':>8}{'buffers':>9}"
        f"{'activ.':>8}{'total':>8}  fits {budget:g} GiB   max batch/GPU"
    )
    lines = [head, "-" * len(head)]
    for strategy, s in result["strategies"].items():
        gib = [s[k] / GIB for k in ("parameters", "gradients", "optimizer", "buffers")]
        lines.append(
            f"{strategy:<33}{gib[0]:>8.2f}{gib[1]:>8.2f}{gib[2]:>8.2f}{gib[3]:>9.2f}"
            f"{s['activations'] / GIB:>8.2f}{s['total'] / GIB:>8.2f}  "
            f"{'yes' if s['fits'] else 'no':<18}{s['max_batch_per_gpu']:>5}"
        )
    dtype = "bf16" if result["precision"] == "bf16-mixed" else "fp32"
    return lines + [
        f"(budget = {result['gpu_memory_gib']:g} GiB - {result['reserve_gib']:g} GiB reserve for "
        "the CUDA context, communication buffers and allocator fragmentation)",
        f"(fsdp = FSDP2: parameters, gradients and AdamW moments sharded 1/{gpus} in fp32, the "
        f"frozen codebook ({4 * counts['codebook'] / GIB:.2f} GiB)",
        f" replicated; buffers = unsharded {dtype} units: the largest "
        f"({result['fsdp_largest_unit'] / 1e6:.1f} M params) with the current and the prefetched",
        " layer, its gradient + fp32 reduce-scatter input, the root; all summed: an upper bound)",
    ]


def _format_step_time(result: dict[str, Any]) -> list[str]:
    """The step-time table: compute, communication and throughput per strategy."""
    gpus = result["gpus"]
    peak = result["mfu"] * result["gpu_tflops"]
    head = (
        f"  {'':<31}{'compute s':>11}{'comm GB':>11}{'comm s':>11}{'step s':>11}  {'bound':<21}"
        f"{'samples/s globally':>18}"
    )
    lines = [
        f"step time at MFU {result['mfu']:.0%} of {result['gpu_tflops']:g} TFLOP/s "
        f"(= {peak:.0f} TFLOP/s achieved), interconnect {result['interconnect_gbps']:g} GB/s "
        "per process:",
        head,
        "  " + "-" * (len(head) - 2),
    ]
    for strategy, s in result["strategies"].items():
        lines.append(
            f"  {strategy:<31}{s['compute_seconds']:>11.3f}"
            f"{s['communication_bytes_per_step'] / 1e9:>11.3f}{s['communication_seconds']:>11.3f}"
            f"{s['step_time_s']:>11.3f}  {s['bound'] + '-bound':<21}{s['samples_per_s']:>18,.0f}"
        )
    if gpus == 1:
        lines.append("(1 process: nothing is communicated, step = compute time)")
    else:
        dtype = "bf16" if result["precision"] == "bf16-mixed" else "fp32"
        lines += [
            "(comm GB = bytes each process sends per step: ddp all-reduces the fp32 gradients;",
            f" fsdp all-gathers each unit's {dtype} parameters per use in forward and backward",
            " and reduce-scatters the fp32 gradients; both gather the contrastive embeddings.",
            " comm s = comm GB / interconnect; step s = max(compute, comm), assuming that they",
            " overlap fully)",
        ]
        if gpus <= 8 and result["interconnect_gbps"] < NVLINK_GBPS:
            lines.append(
                f"(if the {gpus} GPUs share one NVLink node (H100: ~{NVLINK_GBPS:g} GB/s): "
                f"--interconnect {NVLINK_GBPS:g})"
            )
    lines.append("(the checkpointing compute time includes the recompute)")
    return lines


def _format_recommendation(result: dict[str, Any]) -> str:
    """The closing line: the smallest fitting strategy, or what would fit instead."""
    rec = result["recommendation"]
    if rec:
        return f"\nrecommended: {rec} (the smallest strategy that fits)"
    best = result["strategies"][STRATEGIES[-1]]["max_batch_per_gpu"]
    advice = (
        f"a batch of {best} per GPU fits with {STRATEGIES[-1]}"
        if best
        else ("not even a batch of 1 fits: use more GPUs or more memory")
    )
    return f"\nrecommended: nothing fits at this batch; {advice}"


# ----------------------------------------------------------------------------- FLOP counting


def flop_counter(display: bool = False) -> Any:
    """FlopCounterMode that also counts PyTorch's CPU flash attention (as the CUDA kernels)."""
    import torch
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    def forward(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return sdpa_flop_count(q, k, v)

    def backward(g: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any):
        return sdpa_backward_flop_count(g, q, k, v)

    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }
    return FlopCounterMode(display=display, custom_mapping=mapping)


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the plan (and write it as JSON with --json); returns the exit status."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the plan for the command-line arguments `argv` (--json: also write it); return it."""
    p = argparse.ArgumentParser(
        prog="python -m flava.plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="flava_full", choices=PRESET_NAMES)
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (data-parallel)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per GPU per step")
    p.add_argument("--text-length", type=int, default=77, help="padded text length")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed")
    p.add_argument("--mfu", type=float, default=0.4, help="model-FLOPs utilisation (0-1]")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="peak TFLOP/s (H100 bf16)")
    p.add_argument("--reserve", type=float, default=3.0, help="GiB kept free per GPU")
    p.add_argument(
        "--interconnect",
        type=float,
        default=INTERCONNECT_GBPS,
        metavar="GBPS",
        help=f"GB/s per process, bus bandwidth (default {INTERCONNECT_GBPS:g}: 200 Gb/s "
        f"InfiniBand per GPU between nodes; NVLink within one H100 node: ~{NVLINK_GBPS:g})",
    )
    p.add_argument("--json", type=Path, help="also write the plan to this file")
    args = p.parse_args(argv)
    for name in ("gpus", "batch_size", "text_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.mfu <= 1:
        p.error("--mfu must be in (0, 1]")
    if args.gpu_memory <= args.reserve:
        p.error("--gpu-memory must exceed --reserve")
    if math.isnan(args.gpu_tflops) or args.gpu_tflops <= 0:
        p.error("--gpu-tflops must be positive")
    if not 0 < args.interconnect < math.inf:
        p.error("--interconnect must be positive")
    config = preset(args.preset)
    w = Workload(args.batch_size, args.text_length)
    result = plan(
        config,
        w,
        args.gpus,
        args.gpu_memory,
        args.precision,
        args.mfu,
        args.gpu_tflops,
        args.reserve,
        args.interconnect,
    )
    result["preset"] = args.preset
    print(format_plan(result, args.preset))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main())
