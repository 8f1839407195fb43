"""Memory per GPU, by strategy (Lightning's, as `flava.train` sets them up):

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
codebook's transient feature maps (the codebook runs before any encoder keeps activations).
"""

from __future__ import annotations

from flava.model.codebook import DOWNSAMPLE
from flava.model.config import FlavaConfig
from flava.planning.communication import fsdp_units
from flava.planning.flops import encoder_passes
from flava.planning.parameters import parameter_counts
from flava.planning.workload import Workload, check_choices

# Saved-for-backward bytes per token and layer: (per hidden unit, per MLP unit), measured with
# saved_tensors_hooks on flava.model.transformer.Layer (tests/test_plan.py re-checks them);
# autocast's bf16 weight copies are not per token: they are counted with the parameters.
LAYER_BYTES = {"32": (24, 4), "bf16-mixed": (16, 2)}
EXTRA_STATES_PER_PASS = 3  # embedding / final-norm tensors of width D kept per encoder pass


def activation_bytes(
    config: FlavaConfig, w: Workload, precision: str, checkpointing: bool
) -> dict[str, float]:
    """Activation memory of one pair step at the start of the backward pass, by part."""
    per_d, per_f = LAYER_BYTES[precision]
    b, out = w.batch_size, {"layers": 0.0, "other": 0.0}
    largest_layer = 0.0
    for _, c, n in encoder_passes(config, w):
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
    held = out["layers"] + out["other"] + heads + out.get("recomputed_layer", 0)
    # The codebook's targets are computed before any encoder runs (objectives.pretraining).
    out["total"] = max(held + out["transient"], out["codebook_transient"])
    return out


def memory_per_gpu(
    config: FlavaConfig, w: Workload, gpus: int, precision: str, strategy: str
) -> dict[str, float]:
    """Bytes per GPU: parameters, gradients, optimiser, buffers, activations, total."""
    check_choices(precision, strategy)
    counts = parameter_counts(config)
    trainable, codebook = counts["trainable"], counts["codebook"]
    mixed = precision == "bf16-mixed"
    work = 2 if mixed else 4  # bytes of the weights the matrix products read
    params: float
    grads: float
    optimizer: float
    buffers: float
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
