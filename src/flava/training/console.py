"""What a person reads while a run trains: a step bar on a terminal, plain lines in a log file."""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from flava.training.counts import describe_skips

log = logging.getLogger("flava")
ORDER = ["mim", "mlm", "contrastive", "itm", "mmm_image", "mmm_text"]
SHORT_NAMES = {"contrastive": "con", "mmm_image": "mmm-i", "mmm_text": "mmm-t"}
LIGHTNING_MODULES = r"(lightning|lightning_fabric|pytorch_lightning)\."
STEP_BAR = "{desc} {n_fmt}/{total_fmt} |{bar:24}| {elapsed}{postfix}"


class _NoTip(logging.Filter):
    """Drops Lightning's advertising line ("💡 Tip: ... litlogger")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_library_noise() -> None:
    """Ignore deprecation warnings raised inside Lightning's own code, and its tips.

    The filters match the module a warning is attributed to, so a deprecated call in user code
    (attributed to the caller) still shows.
    """
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=LIGHTNING_MODULES)
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTip) for f in tips.filters):
        tips.addFilter(_NoTip())
    lightning_log = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():  # else each message prints twice ("INFO: ..." too)
        for handler in list(lightning_log.handlers):
            lightning_log.removeHandler(handler)


def on_terminal() -> bool:
    """True when both output streams are a terminal (a bar there can be read, not logged)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def duration(seconds: float) -> str:
    """Seconds as 45s, 6m10s or 2h05m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _batch_size(batch: Any) -> int:
    """Samples in a collated batch (the first dimension of its first tensor)."""
    if hasattr(batch, "tensors"):  # a PretrainingBatch
        batch = batch.tensors
    values = batch.values() if isinstance(batch, dict) else batch
    for value in values if isinstance(batch, (dict, list, tuple)) else [batch]:
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return 0


def skipped_text(metrics: dict[str, Any]) -> str:
    """`skipped 12 (truncated_image 10, empty_text 2)` from the logged counts, else ""."""
    total = metrics.get("data/skipped")
    if total is None or float(total) <= 0:
        return ""
    prefix = "data/skipped/"
    counts = {k[len(prefix) :]: int(float(v)) for k, v in metrics.items() if k.startswith(prefix)}
    return f"skipped {int(float(total))}" + (f" ({describe_skips(counts)})" if counts else "")


class StepReadout:
    """Step, losses, samples/s and ETA of the running fit, read from the trainer."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.start_step = 0
        self.samples = 0
        self.kind: str | None = None

    def batch_start(self, trainer: L.Trainer) -> None:
        """Start the clock at the first batch (after set-up and the "before" evaluation)."""
        if self.start is None:
            self.start, self.start_step = time.perf_counter(), trainer.global_step

    def batch_end(self, trainer: L.Trainer, batch: Any) -> None:
        """Count the batch's samples over every process and note its kind."""
        self.samples += _batch_size(batch) * trainer.world_size
        kind = getattr(batch, "kind", None) or (
            batch.get("kind") if isinstance(batch, dict) else None
        )
        self.kind = kind if isinstance(kind, str) else None

    def losses(self, trainer: L.Trainer) -> dict[str, float]:
        """The total loss, then each objective's latest logged value, by short name."""
        out: dict[str, float] = {}
        metrics = trainer.callback_metrics
        if "train/loss" in metrics:
            out["loss"] = float(metrics["train/loss"])
        names = [k.removeprefix("train/") for k in metrics if k.startswith("train/")]
        for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n)):
            skip = name.startswith("loss") or name == "logit_scale" or name.endswith("accuracy")
            if not skip and metrics[f"train/{name}"].numel() == 1:
                out[SHORT_NAMES.get(name, name)] = float(metrics[f"train/{name}"])
        return out

    def rate_and_eta(self, trainer: L.Trainer) -> tuple[float, float | None]:
        """Samples per second since the first batch, and seconds left to max_steps (or None)."""
        elapsed = time.perf_counter() - (self.start or time.perf_counter())
        done = trainer.global_step - self.start_step
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        left = trainer.max_steps - trainer.global_step if trainer.max_steps > 0 else None
        eta = left * elapsed / done if left is not None and done > 0 else None
        return rate, eta

    def text(self, trainer: L.Trainer) -> str:
        """`loss 8.31 (vl)  mim 4.10 mlm 2.30 ...  52.1 samples/s  eta 6m10s`."""
        losses = self.losses(trainer)
        parts = []
        if "loss" in losses:
            total = losses.pop("loss")
            parts.append(f"loss {total:.3f}" + (f" ({self.kind})" if self.kind else ""))
        if losses:
            parts.append(" ".join(f"{k} {v:.3f}" for k, v in losses.items() if math.isfinite(v)))
        skipped = skipped_text(trainer.callback_metrics)
        if skipped:
            parts.append(skipped)
        rate, eta = self.rate_and_eta(trainer)
        parts.append(f"{rate:.1f} samples/s")
        if eta is not None:
            parts.append(f"eta {duration(eta)}")
        return "  ".join(parts)

    def line(self, trainer: L.Trainer) -> str:
        """`step 120/1150  ` + text()."""
        total = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        return f"step {trainer.global_step}{total}  {self.text(trainer)}"


class StepLog(L.Callback):
    """One plain log line every `every_n_steps` optimiser steps (and at the last), rank 0 only."""

    def __init__(self, every_n_steps: int) -> None:
        self.every = max(1, int(every_n_steps))
        self.readout = StepReadout()
        self.logged_step = -1

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.readout.batch_start(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        """Log the readout at every N-th optimiser step and at the last."""
        self.readout.batch_end(trainer, batch)
        step = trainer.global_step
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if step == self.logged_step or not (step % self.every == 0 or last):
            return  # an accumulated batch of a step already logged, or not yet N steps
        self.logged_step = step
        if trainer.is_global_zero:
            log.info(self.readout.line(trainer))


class StepProgressBar(TQDMProgressBar):
    """A bar over optimiser steps (step / max_steps), the losses, samples/s and ETA."""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.readout = StepReadout()

    def init_train_tqdm(self) -> Tqdm:
        """The training bar: one tick per optimiser step, no epoch, no version string."""
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else None
        return Tqdm(
            desc="train",
            total=total,
            initial=self.trainer.global_step,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=STEP_BAR,
        )

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Lightning's bar metrics without the logger's version string."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Keep the one step bar across epochs."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.readout.batch_start(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        """Move the bar to the optimiser step and show the readout."""
        self.readout.batch_end(trainer, batch)
        bar, step = self.train_progress_bar, trainer.global_step
        if bar.disable or bar.n == step:
            return
        if step % self.refresh_rate == 0 or step == bar.total:
            bar.n = step
            bar.set_postfix_str(self.readout.text(trainer), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The postfix stays the step readout."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the validation bar; the training bar keeps its readout."""
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()


class ParameterSummary(ModelSummary):
    """Lightning's model summary with parameter counts only (its FLOPs read 0 without an
    example input)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        """Log one line per top-level module (name, type, parameters) and the totals."""
        columns = dict(summary_data)
        rows = zip(columns["Name"], columns["Type"], columns["Params"], strict=True)
        lines = [f"  {name:<24}{kind:<28}{params.strip():>8}" for name, kind, params in rows]
        frozen_parameters = total_parameters - trainable_parameters
        total, trainable, frozen = (
            get_human_readable_count(n).strip()
            for n in (total_parameters, trainable_parameters, frozen_parameters)
        )
        lines.append(
            f"  parameters: {total} ({trainable} trainable, {frozen} frozen), {model_size:,.1f} MB"
        )
        log.info("model:\n%s", "\n".join(lines))


def console_callbacks(enable_progress_bar: bool, every_n_steps: int) -> tuple[bool, list[Any]]:
    """(show Lightning's bar?, callbacks): the step bar on a terminal, else plain step lines."""
    quiet_library_noise()
    show_bar = bool(enable_progress_bar) and on_terminal()
    readout: L.Callback = StepProgressBar() if show_bar else StepLog(every_n_steps)
    return show_bar, [ParameterSummary(max_depth=1), readout]
