"""training.host_memory: glibc's malloc keeps a step's large freed blocks for reuse (no page
faults on the next step's tensors) or returns them at once (FSDP2 on CPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from flava.training import host_memory

FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from flava.training import host_memory
    print(host_memory.apply(sys.argv[1]))
    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):  # a 64 MiB tensor, written, freed: as a step's activations are
            torch.ones(16 * 2**20)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults()
    print(faults())
    """
)


def _faults(policy: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, policy], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.parametrize(
    ("policy", "strategy", "on_cpu", "chosen"),
    [
        ("auto", "auto", True, "reuse"),
        ("auto", "ddp", True, "reuse"),
        ("auto", "fsdp", True, "return"),
        ("auto", "ddp", False, "system"),
        ("return", "ddp", True, "return"),
        ("reuse", "fsdp", True, "reuse"),
    ],
)
def test_auto_resolves_by_strategy_and_device(policy, strategy, on_cpu, chosen):
    assert host_memory.resolve(policy, strategy, on_cpu) == chosen


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="host_memory='fast': expected one of auto"):
        host_memory.resolve("fast", "auto", True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_stops_page_faults_that_system_and_return_pay_on_every_step():
    policy, reused = _faults("reuse")
    assert policy == "reuse"
    for other in ("system", "return"):
        chosen, faults = _faults(other)
        # mapped and zeroed by the kernel again each time (at least one fault per 2 MiB huge
        # page of the 5 x 64 MiB), against the reused heap's few
        assert chosen == other and faults >= 5 * 32 and faults > 20 * max(reused, 1)
