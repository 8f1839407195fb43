"""The one way tests start several processes: `torchrun --standalone`, which picks free ports
itself (a port derived from the test's pid once collided), and a failure that shows the
processes' own stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def killed_when(nproc: int, *target: str, ready: Callable[[], bool], log: Path) -> None:
    """Start `nproc` processes of `target` and SIGKILL all of them, with no clean-up, once
    `ready()` is true (polled); their stderr goes to `log`."""
    proc = subprocess.Popen(
        torchrun_command(nproc, *target),
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it was killed: {log.read_text()[-3000:]}"
    kill_tree(proc.pid)
    proc.wait(timeout=30)


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process under it. torchrun starts its workers in sessions of
    their own, so killing its process group leaves them running (and writing); each process
    of the tree is stopped first, so that none starts another while they are collected."""
    stopped: set[int] = set()
    while tree := set(_tree(pid)) - stopped:
        for p in tree:
            _signal(p, signal.SIGSTOP)
        stopped |= tree
    for p in stopped:
        _signal(p, signal.SIGKILL)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(p := todo.pop())
        todo += children.get(p, [])
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
