"""The plan: memory, communication and step time of each strategy, and the smallest one that
fits (step time = max(compute, communication): full overlap)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flava.model.config import FlavaConfig
from flava.planning.communication import INTERCONNECT_GBPS, communication_bytes
from flava.planning.flops import step_flops
from flava.planning.memory import fsdp_buffers, largest_unit, max_batch, memory_per_gpu
from flava.planning.parameters import parameter_counts
from flava.planning.workload import GIB, STRATEGIES, Workload


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
