"""The LightningModule of fine-tuning (paper section 5): the classifier's loss on each
`FinetuneBatch`, validation metrics per split, the bad-example counts and stop, the optimiser.
Its data is `flava.training.finetune_data`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from flava.config import FinetuneConfig
from flava.data.batch import FinetuneBatch
from flava.model.classifier import FlavaClassifier
from flava.tasks.metrics import TaskMetrics
from flava.training.counts import SkipCounter
from flava.training.optim import adamw_with_schedule, check_multipliers, clip_gradients

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig


def task_loss(logits: torch.Tensor, targets: torch.Tensor, task_type: str) -> torch.Tensor:
    """Cross-entropy, MSE (one output) or soft-label BCE summed over answers (mean over batch)."""
    logits = logits.float()
    if task_type == "regression":
        return F.mse_loss(logits[:, 0], targets.float())
    if task_type == "vqa":
        bce = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="sum")
        return bce / logits.shape[0]
    return F.cross_entropy(logits, targets)


class FinetuneModule(L.LightningModule):
    """Trains the classifier; validation metrics per split, logged as <prefix>/<metric>."""

    def __init__(self, cfg: FinetuneConfig, model: FlavaClassifier, prefixes: list[str]) -> None:
        super().__init__()
        self.cfg, self.model, self.prefixes = cfg, model, prefixes
        # a prefix naming no parameter fails here, before any work
        check_multipliers((n for n, _ in model.named_parameters()), cfg.training.lr_multipliers)
        k = cfg.task
        outputs = model.settings["num_outputs"]
        self.metrics = nn.ModuleList(
            TaskMetrics(list(k.metrics), k.type, outputs) for _ in prefixes
        )
        self.counter = SkipCounter()  # bad training examples per reason, examples read
        self.val_skipped: dict[str, int] = {}  # bad validation examples of the last pass
        self._val_pass: dict[str, int] = {}
        self.stopped: tuple[str, str] | None = None  # (checkpoint stem, one-line reason)

    def task_metrics(self, index: int) -> TaskMetrics:
        """The metrics of validation set `index`."""
        metrics = self.metrics[index]
        assert isinstance(metrics, TaskMetrics)  # (nn.ModuleList holds them for the device)
        return metrics

    def _count_data(self, batch: FinetuneBatch) -> None:
        """Add the batch's skipped examples; stop when too large a fraction of them was bad."""
        self.counter.add(batch.tally.skipped, batch.tally.samples_read, batch.tally.skip_examples)
        limit, size = self.cfg.data.max_skipped_fraction, self.cfg.training.batch_size
        reason = self.counter.check(self, limit, "data.max_skipped_fraction", size)
        if reason is not None:
            self.stopped = ("bad-data-stop", reason)
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["flava_counters"] = self.counter.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.counter.load_state_dict(checkpoint.get("flava_counters", {}))

    def forward(self, batch: FinetuneBatch) -> torch.Tensor:
        """Logits for a collated batch."""
        return self.model(**batch.inputs)

    def training_step(self, batch: FinetuneBatch, batch_idx: int) -> torch.Tensor:
        self._count_data(batch)
        loss = task_loss(self(batch), batch.targets, self.cfg.task.type)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch.size)
        return loss

    def validation_step(
        self, batch: FinetuneBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        for reason, n in batch.tally.skipped.items():
            self._val_pass[reason] = self._val_pass.get(reason, 0) + int(n)
        targets = batch.targets
        if targets.shape[0] == 0:
            return
        logits = self(batch)
        loss = task_loss(logits, targets, self.cfg.task.type)
        self.task_metrics(dataloader_idx).update(logits, targets)
        self.log(
            f"{self.prefixes[dataloader_idx]}/loss",
            loss,
            on_epoch=True,
            batch_size=targets.shape[0],
            add_dataloader_idx=False,
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        self.val_skipped, self._val_pass = self._val_pass, {}
        for index, prefix in enumerate(self.prefixes):
            metrics = self.task_metrics(index)
            for name, value in metrics.compute().items():  # synced across processes
                self.log(f"{prefix}/{name}", value, add_dataloader_idx=False)
            metrics.reset()

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        return adamw_with_schedule(
            self.model.named_parameters(), self.cfg.training, self.device, self.trainer.max_steps
        )
