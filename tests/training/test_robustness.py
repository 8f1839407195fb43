"""Non-finite losses: the update is skipped and counted; too many in a row stop the run."""

from __future__ import annotations

import json

import pytest
import torch

import flava.objectives.pretraining as pretraining
from flava.train import main

from .test_train import SMALL

pytestmark = pytest.mark.slow


def nan_contrastive(*args, **kwargs):
    out = pretraining.__dict__["_real_contrastive"](*args, **kwargs)
    return {**out, "contrastive": out["contrastive"] * float("nan")}


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch, capsys):
    pretraining.__dict__.setdefault("_real_contrastive", pretraining.contrastive_loss)
    monkeypatch.setattr(pretraining, "contrastive_loss", nan_contrastive)
    run = tmp_path / "nan"
    args = [
        *SMALL,
        f"training.run_dir={run}",
        "training.lightning.max_steps=6",
        "training.nonfinite_patience=3",
    ]
    # round robin image, text, vl: one NaN step in three is skipped and never stops the run
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["nonfinite_skipped/vl"] == 2 and "nonfinite_skipped/image" not in metrics
    assert all(
        torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("after/val/mim")
    )
    # only pairs: every step is non-finite -> stop after 3 with a checkpoint and exit status 1
    stop = tmp_path / "stop"
    assert (
        main(
            [
                *args[:-1],
                f"training.run_dir={stop}",
                "training.nonfinite_patience=3",
                "datasets.selected=[vl]",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: stopped after 3 steps in a row") and "checkpoint" in err
    assert (stop / "checkpoints" / "nonfinite-stop.ckpt").exists()
    assert json.loads((stop / "metrics.json").read_text())["nonfinite_skipped/vl"] == 3
