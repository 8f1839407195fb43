"""Run set-up shared by the entry points: run directory, trainer, loggers, reports."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from flava.config import make_directory, to_yaml

log = logging.getLogger("flava")


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create the run directory and save the resolved config as config.yaml."""
    run_dir = make_directory(cfg.training.run_dir, "training.run_dir")
    if int(os.environ.get("RANK", "0")) == 0:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    return run_dir


def _strategy(name: str) -> Any:
    """Lightning strategy by name; DDP tolerates the parameters a batch kind leaves unused."""
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True)
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from flava.model.transformer import Layer

        return FSDPStrategy(auto_wrap_policy={Layer}, use_orig_params=True)
    return name


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    """A Lightning Trainer from training.lightning, with CSV (+ TensorBoard) logs, checkpoints."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from flava.training.precision import lightning_precision

    lc = cfg.training.lightning
    ck = cfg.training.lightning_checkpoint
    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="logs", version="")]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard"))
    except ModuleNotFoundError:  # tensorboard is optional
        pass
    checkpoint = ModelCheckpoint(
        dirpath=ck.dirpath or str(run_dir / "checkpoints"),
        filename=ck.filename,
        every_n_train_steps=ck.every_n_train_steps,
        save_last=ck.save_last,
        save_top_k=ck.save_top_k,
        save_on_train_epoch_end=ck.save_on_train_epoch_end,
        verbose=ck.verbose,
    )
    precision = lightning_precision(lc)  # checked against the hardware, auto resolved
    accelerator, devices = lc.accelerator, lc.devices
    if lc.gpus is not None:  # the original release's spelling
        accelerator, devices = "gpu", lc.gpus
    return L.Trainer(
        max_steps=lc.max_steps,
        max_epochs=lc.max_epochs if lc.max_epochs is not None else -1,
        max_time=lc.max_time,
        accelerator=accelerator,
        devices=devices,
        num_nodes=lc.num_nodes,
        strategy=_strategy(lc.strategy),
        precision=precision,
        gradient_clip_val=lc.gradient_clip_val,
        accumulate_grad_batches=lc.accumulate_grad_batches,
        val_check_interval=lc.val_check_interval,
        check_val_every_n_epoch=None if lc.val_check_interval else 1,
        limit_val_batches=lc.limit_val_batches,
        num_sanity_val_steps=lc.num_sanity_val_steps,
        log_every_n_steps=lc.log_every_n_steps,
        enable_progress_bar=lc.enable_progress_bar,
        deterministic=lc.deterministic,
        logger=loggers,
        callbacks=[checkpoint, LearningRateMonitor(logging_interval="step"), *callbacks],
        default_root_dir=str(run_dir),
    )


def read_logged(run_dir: Path) -> list[dict[str, float]]:
    """Rows of the CSV logger (one per logging step), numbers only."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            clean = {k: float(v) for k, v in row.items() if v not in ("", None)}
            rows.append(clean)
    return rows


def loss_trends(rows: list[dict[str, float]], window: float = 0.1) -> dict[str, float]:
    """Mean of each train/* loss over the first and last `window` of its logged values."""
    out: dict[str, float] = {}
    names = sorted(
        {k for r in rows for k in r if k.startswith("train/") and k != "train/logit_scale"}
    )
    for name in names:
        values = [r[name] for r in rows if name in r and math.isfinite(r[name])]
        if len(values) < 2:
            continue
        n = max(1, int(len(values) * window))
        out[f"{name}/first"] = sum(values[:n]) / n
        out[f"{name}/last"] = sum(values[-n:]) / n
    return out


def stop_with_checkpoint(
    trainer: L.Trainer, run_dir: Path, stopped: tuple[str, str], counts: dict[str, Any]
) -> str:
    """Write `checkpoints/<stem>.ckpt` and the counts of a run that stopped early; the one-line
    reason to raise (exit status 1)."""
    stem, message = stopped
    path = run_dir / "checkpoints" / f"{stem}.ckpt"
    trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        write_metrics(run_dir, counts)
    return f"{message}; checkpoint written to {path}"


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """metrics.json with sorted keys."""
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))


def plot_curves(
    run_dir: Path, rows: list[dict[str, float]], history: list[dict[str, float]]
) -> None:
    """curves.png: smoothed training losses per objective, and evaluation metrics over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(
        {
            k
            for r in rows
            for k in r
            if k.startswith("train/")
            and not k.startswith(("train/loss", "train/logit"))
            and not k.endswith("accuracy")
        }
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        pts = [(r["step"], r[name]) for r in rows if name in r and "step" in r]
        if not pts:
            continue
        steps, values = zip(*pts, strict=True)
        k = max(1, len(values) // 20)
        smooth = [
            sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1])
            for i in range(len(values))
        ]
        marker = "o" if len(steps) < 3 else None  # a line needs two points
        axes[0].plot(steps, smooth, marker=marker, label=name.removeprefix("train/"))
    axes[0].set(title="training losses (smoothed)", xlabel="step", ylabel="loss")
    axes[0].legend(fontsize=8)
    plot_evaluation(axes[1], history)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)


def plot_evaluation(ax: Any, history: list[dict[str, float]]) -> None:
    """Retrieval (solid) and zero-shot (dashed) metrics over steps on one matplotlib axis."""
    keys = list(dict.fromkeys(k for h in history for k in h if k != "step"))
    for key in keys:
        pts = [(h["step"], h[key]) for h in history if key in h]
        steps, values = zip(*pts, strict=True)
        style = "--" if key.startswith("zero_shot/") else "-"
        ax.plot(steps, values, style, marker="o", markersize=3, label=key)
    ax.set(title="zero-shot evaluation (validation)", xlabel="step", ylim=(0, 1.02))
    if keys:
        ax.legend(fontsize=7)
    else:
        note = "no evaluation\n(disabled, or no usable vl validation pairs\n"
        note += "nor labelled image validation)"
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=9, transform=ax.transAxes)


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def set_threads() -> None:
    """Use every core for intra-op parallelism unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
