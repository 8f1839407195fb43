"""A run killed with SIGKILL resumes exactly; a crash while writing a checkpoint loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flava.checkpoints import from_pretrained
from flava.model import FlavaForPreTraining
from flava.train import main

from .test_train import EVERY_STEP, SMALL

pytestmark = pytest.mark.slow

STEPS = 12
# Kills the process (SIGKILL, no clean-up) halfway through writing the third last.ckpt.
_KILL_MID_WRITE = r"""
import os, signal, sys
from fsspec.implementations.local import LocalFileOpener
from flava.train import main

real_write = LocalFileOpener.write
seen = {"last": 0}

def write(self, data):
    if os.path.basename(self.path) == "last.ckpt":
        seen["last"] += 1
        if seen["last"] == 3:
            real_write(self, bytes(data)[: len(data) // 2])
            self.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real_write(self, data)

LocalFileOpener.write = write
sys.exit(main(sys.argv[1:]))
"""


def _args(run: Path, *extra: str) -> list[str]:
    steps = f"training.lightning.max_steps={STEPS}"
    return [*SMALL, f"training.run_dir={run}", steps, *extra]


# The killed runs are processes of their own, with the thread count of this one: the runs that
# finish run here (a start-up of their own costs more than their steps), on the same kernels.
def _env() -> dict[str, str]:
    """The environment as it is when a run starts (fixtures set variables)."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _train(run: Path, *extra: str) -> None:
    assert main(_args(run, *extra)) == 0


def _saved_step(run: Path, step: int) -> bool:
    """Whether a periodic checkpoint of `step` or later exists (older ones are pruned)."""
    found = (p.stem.partition("=")[2] for p in (run / "checkpoints").glob("flava-step=*.ckpt"))
    return any(s.isdigit() and int(s) >= step for s in found)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return from_pretrained(FlavaForPreTraining, run / "model").state_dict()


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("straight")
    _train(run)
    return _weights(run)


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, straight):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "flava.train", *_args(run, EVERY_STEP)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 240
    while not _saved_step(run, 4) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    last = run / "checkpoints" / "last.ckpt"
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 3 <= killed_at < STEPS and not (run / "model").exists()  # really mid-run
    _train(run, f"training.lightning_load_from_checkpoint={last}")
    weights = _weights(run)
    assert weights.keys() == straight.keys()
    for key, value in straight.items():
        assert torch.equal(weights[key], value), key  # bit-identical on CPU in fp32


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, straight):
    run = tmp_path / "midwrite"
    cmd = [sys.executable, "-c", _KILL_MID_WRITE, *_args(run, EVERY_STEP)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)  # whole, not half-written
    assert ckpt["global_step"] == 2 and ckpt["PretrainingData"]["start_batch"] == 2
    _train(run, f"training.lightning_load_from_checkpoint={last}")
    weights = _weights(run)
    for key, value in straight.items():
        assert torch.equal(weights[key], value), key
