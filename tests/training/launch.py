"""The one way tests start several processes: `torchrun --standalone`, which picks free ports
itself (a port derived from the test's pid once collided), and a failure that shows the
processes' own stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
"""The repository's root: on the processes' path, so that they import test modules too."""


def environment() -> dict[str, str]:
    """This process's environment (as it is now: tests set variables) with one thread each."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}


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


def run_plan(
    nproc: int, plan: list[dict], folder: Path, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """Run the runs of `plan` (`run_plan.py`'s entries) in order in one launch of `nproc`
    processes; each must exit 0. The launch's output."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(plan))
    runner = str(Path(__file__).with_name("run_plan.py"))
    done = torchrun(nproc, runner, str(folder / "plan.json"), timeout=timeout)
    assert json.loads((folder / "codes.json").read_text()) == [0] * len(plan)
    return done
