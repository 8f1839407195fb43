"""Two processes on CPU (gloo, torchrun): DDP with activation checkpointing trains, and its
checkpoint resumes under one process."""

from __future__ import annotations

import json

import pytest
import torch

from flava.train import main

from .launch import torchrun
from .test_train import SMALL

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_torchrun_two_processes_then_resume_under_one(tmp_path):
    run = tmp_path / "ddp"
    torchrun(
        2,
        "-m",
        "flava.train",
        *SMALL,
        f"training.run_dir={run}",
        "training.lightning.max_steps=3",
        "training.lightning.strategy=ddp",
        "training.lightning.devices=2",
        "model.activation_checkpointing=true",
        "datasets.sampling=probability",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["PretrainingData"]["start_batch"] == 3
    resumed = tmp_path / "one"
    assert (
        main(
            [
                *SMALL,
                f"training.run_dir={resumed}",
                "training.lightning.max_steps=4",
                f"training.lightning_load_from_checkpoint={last}",
            ]
        )
        == 0
    )
    assert json.loads((resumed / "metrics.json").read_text())["steps"] == 4
