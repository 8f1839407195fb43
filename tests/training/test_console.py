"""The console: plain step lines off a terminal, a step bar on one, per-kind loss trends."""

from __future__ import annotations

import json
import logging
import warnings

import lightning as L
import pytest
import torch

from flava.checkpoints.run_dir import RunDir
from flava.train import main
from flava.training.console import ParameterSummary, StepLog, StepProgressBar, duration
from flava.training.curves import plot_curves
from flava.training.logged import loss_trends

from .test_train import SMALL


class Toy(L.LightningModule):
    """A linear model logging a total loss and one objective per step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=True)
        self.log("train/mim", 2 * loss, on_step=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callbacks: list[L.Callback], steps: int, bar: bool) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(32, 2))
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bar,
        callbacks=callbacks,
    )
    trainer.fit(Toy(), torch.utils.data.DataLoader(data, batch_size=4))


def test_step_lines_every_n_steps_and_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="flava")
    _fit([StepLog(every_n_steps=2)], steps=5, bar=False)
    lines = [m for m in caplog.messages if m.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/5", "4/5", "5/5"]
    assert "loss " in lines[0] and "mim " in lines[0] and "samples/s" in lines[0]
    assert "eta " in lines[0]


def test_step_bar_counts_optimiser_steps(capsys):
    _fit([StepProgressBar()], steps=3, bar=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "train 3/3" in text and "samples/s" in text and "loss " in text
    assert "v_num" not in text and "Epoch" not in text


def test_parameter_summary_has_no_flops(caplog):
    caplog.set_level(logging.INFO, logger="flava")
    _fit([ParameterSummary(max_depth=1)], steps=1, bar=False)
    assert "parameters: 3 (3 trainable, 0 frozen)" in caplog.text
    assert "FLOPs" not in caplog.text and "Flops" not in caplog.text


def test_duration():
    assert [duration(s) for s in (5, 370, 7500)] == ["5s", "6m10s", "2h05m"]


def _row(step: int, kind: str, loss: float, **objectives: float) -> dict[str, float]:
    return {"step": step, "train/loss": loss, f"train/loss_{kind}": loss, **objectives}


def test_loss_trends_compare_like_with_like():
    """First rows image batches (MIM only), last rows pairs: no mixed train/loss trend."""
    rows = [
        _row(0, "image", 5.5, **{"train/mim": 5.5}),
        _row(1, "image", 5.4, **{"train/mim": 5.4}),
    ]
    for step, loss in enumerate((20.8, 20.1, 19.6, 19.1), start=2):
        vl = {"train/contrastive": loss / 5, "train/itm_accuracy": 0.5, "train/mim": 5.4}
        rows.append({**_row(step, "vl", loss, **vl), "train/loss_image": 5.4})  # stale
    rows.append({"step": 6, "eval/zero_shot/top1": 0.2})  # not a training row
    trends = loss_trends(rows, window=0.25)
    assert "train/loss/first" not in trends and "train/loss/last" not in trends
    assert trends["train/image/loss/first"] == 5.5 and trends["train/image/loss/last"] == 5.4
    assert trends["train/vl/loss/first"] == 20.8 and trends["train/vl/loss/last"] == 19.1
    assert trends["train/mim/first"] == 5.5 and trends["train/mim/last"] == 5.4  # repeats dropped
    assert trends["train/contrastive/last"] < trends["train/contrastive/first"]
    assert not any("accuracy" in k or "loss_" in k for k in trends)


def test_loss_trends_single_kind():
    rows = [{"step": s, "train/loss": v} for s, v in enumerate((1.0, 0.9, 0.7, 0.5))]
    assert loss_trends(rows, window=0.25) == {"train/loss/first": 1.0, "train/loss/last": 0.5}


@pytest.mark.slow
def test_tiny_run_off_a_terminal(tmp_path, capfd, caplog, recwarn):
    caplog.set_level(logging.INFO, logger="flava")
    run = tmp_path / "run"
    args = [
        *SMALL,
        "training.lightning.enable_progress_bar=true",  # stdout is no terminal: plain lines
        "training.lightning.max_steps=6",
        "training.lightning_checkpoint.every_n_train_steps=100",
        f"training.run_dir={run}",
    ]
    assert main(args) == 0
    captured = capfd.readouterr()
    text = captured.out + captured.err + caplog.text
    steps = [m.split()[1] for m in caplog.messages if m.startswith("step ")]
    assert steps == [f"{s}/6" for s in range(1, 7)]
    assert "FLOPs" not in text and "Flops" not in text and "v_num" not in text
    assert "Epoch" not in text and "LeafSpec" not in text
    assert not [w for w in recwarn if "lightning" in w.filename and "deprecat" in str(w.message)]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "train/loss/first" not in metrics
    assert {"train/vl/loss/first", "train/image/loss/first", "train/text/loss/first"} <= set(
        metrics
    )
    trend = captured.out[captured.out.index("training (first -> last") :].splitlines()[1:]
    names = [line.split()[0] for line in trend]
    assert names[:3] == ["image/loss", "text/loss", "vl/loss"] and "mim" in names
    assert "loss" not in names


@pytest.mark.parametrize("logged", [False, True], ids=["no-losses", "losses"])
def test_curves_of_a_run_too_short_to_log_warn_nothing(tmp_path, logged):
    # a run shorter than log_every_n_steps logs no loss: matplotlib warned "No artists with
    # labels found to put in legend" into the console of such runs
    rows = [{"step": s, "train/mim": 5.0 - s} for s in (1, 2, 3)] if logged else [{"step": 1}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_curves(RunDir(tmp_path), rows, [])
    assert (tmp_path / "curves.png").stat().st_size > 0
