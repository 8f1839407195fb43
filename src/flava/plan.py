"""`python -m flava.plan`: memory per GPU, FLOPs and step time of a pretraining run, on paper.

    python -m flava.plan --preset 10b --gpus 64 --gpu-memory 80 --batch-size 16
    python -m flava.plan --preset flava_full --gpus 8 --batch-size 64 --precision 32 --json p.json
    python -m flava.plan --preset flava_full --gpus 16 --batch-size 128 --interconnect 25

Everything is analytic (nothing is built or allocated), for the largest step kind, the
image-text pair step: global contrastive on the unmasked pair, ITM + MMM on the masked pair,
MIM targets from a forward pass of the DALL-E codebook. `--batch-size` is per GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from flava.model.presets import PRESET_NAMES, preset
from flava.planning import (
    GIB,
    INTERCONNECT_GBPS,
    NVLINK_GBPS,
    PRECISIONS,
    STRATEGIES,
    Workload,
    communication,
    flops,
    memory,
    plan,
)

_DESCRIPTION = "\n".join(
    [__doc__ or "", *(m.__doc__ or "" for m in (memory, flops, communication))]
)
"""--help: the usage above, then the docstrings of `flava.planning`'s memory, FLOPs and
communication models (the analytic model itself lives there)."""


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the plan (and write it as JSON with --json); returns the exit status."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the plan for the command-line arguments `argv` (--json: also write it); return it."""
    p = argparse.ArgumentParser(
        prog="python -m flava.plan",
        description=_DESCRIPTION,
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
