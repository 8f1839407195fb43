"""Communication: bytes each process sends (and receives) per step with ring collectives, W
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

from flava.model.config import FlavaConfig
from flava.planning.flops import encoder_passes
from flava.planning.parameters import head_parameters, layer_parameters, parameter_counts
from flava.planning.workload import Workload, check_choices

INTERCONNECT_GBPS = 25.0  # GB/s per process: 200 Gb/s InfiniBand per GPU between nodes
NVLINK_GBPS = 450.0  # GB/s per process (bus bandwidth) within one H100 NVLink node


def fsdp_units(config: FlavaConfig, w: Workload) -> list[tuple[str, int, int, int]]:
    """(unit, parameters, all-gathers per pair step, parameters reduce-scattered) of every FSDP2
    unit (`flava.training.sharding.shard`) the pair step communicates for."""
    counts, passes = parameter_counts(config), [c for _, c, _ in encoder_passes(config, w)]
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
        ("mmm_image_head", head_parameters(dm, i.vocab_size)),
        ("mmm_text_head", head_parameters(dm, t.vocab_size)),
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
    check_choices(precision, strategy)
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
