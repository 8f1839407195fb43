"""An analytic model of a pretraining run's cost: parameter counts, FLOPs, memory per GPU and
communication per step, and the strategy that fits (nothing is built or allocated).

One idea a module: the step sized (`workload`), `parameters`, `flops`, `memory`,
`communication`, and the plan over the strategies (`strategy`). `python -m flava.plan` prints it.
"""

from __future__ import annotations

from flava.planning.communication import (
    INTERCONNECT_GBPS,
    NVLINK_GBPS,
    communication_bytes,
    fsdp_units,
)
from flava.planning.flops import encoder_forward_flops, flop_counter, step_flops
from flava.planning.memory import (
    LAYER_BYTES,
    activation_bytes,
    fsdp_buffers,
    max_batch,
    memory_per_gpu,
)
from flava.planning.parameters import parameter_counts
from flava.planning.strategy import plan
from flava.planning.workload import GIB, PRECISIONS, STRATEGIES, Workload

__all__ = [
    "GIB",
    "INTERCONNECT_GBPS",
    "LAYER_BYTES",
    "NVLINK_GBPS",
    "PRECISIONS",
    "STRATEGIES",
    "Workload",
    "activation_bytes",
    "communication_bytes",
    "encoder_forward_flops",
    "flop_counter",
    "fsdp_buffers",
    "fsdp_units",
    "max_batch",
    "memory_per_gpu",
    "parameter_counts",
    "plan",
    "step_flops",
]
