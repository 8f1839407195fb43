"""The one way tests start several processes: `torchrun --standalone`, which picks free ports
itself (a port derived from the test's pid once collided), and a failure that shows the
processes' own stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def environment() -> dict[str, str]:
    """This process's environment (as it is now: tests set variables) with one thread each."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def torchrun_command(nproc: int, *target: str) -> list[str]:
    """`python -m torch.distributed.run` for `nproc` local processes; `target` is a script or
    `-m module`, then its arguments."""
    run = (sys.executable, "-m", "torch.distributed.run", "--standalone")
    return [*run, "--nproc_per_node", str(nproc), *target]


def torchrun(
    nproc: int, *target: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run to the end; with `check`, fail the test with the end of the processes' stderr."""
    cmd = torchrun_command(nproc, *target)
    done = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_plan(nproc: int, plan: list[dict], folder: Path, timeout: float = 1800) -> None:
    """Run the training runs of `plan` (`run_plan.py`'s entries) in order in one launch of
    `nproc` processes; each must exit 0."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(plan))
    runner = str(Path(__file__).with_name("run_plan.py"))
    torchrun(nproc, runner, str(folder / "plan.json"), timeout=timeout)
    assert json.loads((folder / "codes.json").read_text()) == [0] * len(plan)
