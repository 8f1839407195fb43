"""Lightning pieces of fine-tuning: batch collation, resumable data, the LightningModule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from flava.data.sources.errors import SAMPLE_ERRORS, skip_reason
from flava.data.sources.sample import Sample
from flava.data.sources.skips import SkipLog, robust_read
from flava.data.tokenizer import FlavaTokenizer
from flava.data.transforms import ImageTransform
from flava.model.classifier import FlavaClassifier
from flava.tasks.metrics import TaskMetrics
from flava.training.counts import SkipCounter
from flava.training.optim import adamw_with_schedule, check_multipliers, clip_gradients

INPUT_KEYS = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")


class Collator:
    """Decoded samples -> a model batch (pixels and / or tokens) with `targets`."""

    def __init__(
        self,
        modality: str,
        task_type: str,
        num_outputs: int,
        tokenizer: FlavaTokenizer,
        transform: ImageTransform,
        max_length: int = 128,
    ) -> None:
        self.modality, self.task_type, self.num_outputs = modality, task_type, num_outputs
        self.tokenizer, self.transform, self.max_length = tokenizer, transform, max_length

    def __call__(
        self, examples: Sequence[Sample], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Collate; `generator` drives random crops / flips of training images. Failed examples
        (`BadSample` and friends, from `UsableExamples`) are left out and counted in "skipped"."""
        skipped = Counter(skip_reason(e) for e in examples if isinstance(e, BaseException))
        examples = [e for e in examples if not isinstance(e, BaseException)]
        batch: dict[str, Any] = {"skipped": dict(skipped)}
        if not examples:
            batch["targets"] = torch.empty(0)
            return batch
        if self.modality in ("image", "multimodal"):
            views = self.transform.batch([e.image for e in examples], generator=generator)
            batch["pixel_values"] = views["pixel_values"]
        if self.modality in ("text", "multimodal"):
            texts = [e.text or "" for e in examples]
            pairs = [e.pair for e in examples]
            second = None if all(p is None for p in pairs) else [p or "" for p in pairs]
            tok = self.tokenizer(texts, second, max_length=self.max_length)
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                batch[key] = tok[key]
        batch["targets"] = self.targets([e.target for e in examples])
        return batch

    def targets(self, values: list[Any]) -> torch.Tensor:
        """Class indices [B], regression values [B] or soft answer scores [B, A]."""
        if self.task_type == "regression":
            return torch.tensor(values, dtype=torch.float32)
        if self.task_type == "vqa":
            out = torch.zeros(len(values), self.num_outputs)
            for row, scores in enumerate(values):
                for index, score in scores.items():
                    out[row, index] = score
            return out
        return torch.tensor(values, dtype=torch.long)


class UsableExamples(torch.utils.data.Dataset):
    """A validation set whose bad examples come back as their exception (the collator drops
    and counts them) instead of stopping the run."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except SAMPLE_ERRORS as exc:
            return exc


class EpochBatches(torch.utils.data.IterableDataset):
    """Endless training batches indexed by global batch number (exact resume, no communication)."""

    # Global batch b reads positions b*B*W + rank*B ... of a per-epoch permutation, so the stream
    # position is the batch index and each process and DataLoader worker takes its own share.

    def __init__(
        self,
        dataset: Any,
        collate: Collator,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        if len(dataset) == 0:
            raise ValueError("the training set is empty")
        self.dataset, self.collate = dataset, collate
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.skips = SkipLog()

    def indices(self, batch_index: int) -> np.ndarray:
        """Dataset indices of this process's share of global batch `batch_index`."""
        n = len(self.dataset)
        start = (batch_index * self.world_size + self.rank) * self.batch_size
        positions = np.arange(start, start + self.batch_size)
        epochs = positions // n
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
            sel = epochs == epoch
            out[sel] = order[positions[sel] % n]
        return out

    def batch(self, batch_index: int) -> dict[str, Any]:
        """Global batch `batch_index` (this process's share), collated."""
        generator = torch.Generator().manual_seed(
            int(np.random.default_rng([self.seed, batch_index, self.rank]).integers(2**62))
        )
        rng = np.random.default_rng([self.seed, batch_index, self.rank, 0xBAD])
        indices = self.indices(batch_index)
        examples = [self._example(int(i), rng) for i in indices]
        out = self.collate(examples, generator)
        out["batch_index"] = torch.tensor(batch_index)
        out["skipped"] = self.skips.take()
        out["skip_examples"] = self.skips.take_examples()
        out["samples_read"] = len(indices) + sum(out["skipped"].values())
        return out

    def _example(self, index: int, rng: np.random.Generator) -> Sample:
        """Sample `index` of the dataset; a bad one is counted and replaced by a randomly drawn
        one."""
        count = len(self.dataset)
        return robust_read(
            self.dataset.__getitem__, count, index, rng, self.skips, "training example"
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        b = self.start_batch + worker
        while True:
            yield self.batch(b)
            b += workers


class FinetuneData(L.LightningDataModule):
    """Training batches by global index (resumable) and one validation loader per split."""

    def __init__(
        self,
        cfg: DictConfig,
        train: Any,
        vals: list[tuple[str, Any]],
        train_collate: Collator,
        eval_collate: Collator,
    ) -> None:
        super().__init__()
        self.cfg, self.train, self.vals = cfg, train, vals
        self.train_collate, self.eval_collate = train_collate, eval_collate
        self.start_batch = 0

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        t = self.cfg.training
        rank, world = self._rank()
        dataset = EpochBatches(
            self.train, self.train_collate, t.batch_size, t.seed, rank, world, self.start_batch
        )
        workers = t.num_workers
        return torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None
        )

    def val_dataloader(self) -> list[torch.utils.data.DataLoader]:
        t = self.cfg.training
        return [
            torch.utils.data.DataLoader(
                UsableExamples(ds),
                batch_size=t.batch_size,
                shuffle=False,
                num_workers=t.num_workers,
                collate_fn=self.eval_collate,
            )
            for _, ds in self.vals
        ]

    def state_dict(self) -> dict[str, Any]:
        """The data position: index of the next training batch (saved in every checkpoint)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        return {"start_batch": int(getattr(module, "batches_seen", self.start_batch))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start_batch = int(state.get("start_batch", 0))


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

    def __init__(self, cfg: DictConfig, model: FlavaClassifier, prefixes: list[str]) -> None:
        super().__init__()
        self.cfg, self.model, self.prefixes = cfg, model, prefixes
        # a prefix naming no parameter fails here, before any work
        check_multipliers((n for n, _ in model.named_parameters()), cfg.training.lr_multipliers)
        k = cfg.task
        outputs = model.settings["num_outputs"]
        self.metrics = nn.ModuleList(
            TaskMetrics(list(k.metrics), k.type, outputs) for _ in prefixes
        )
        self.batches_seen = 0
        self.counter = SkipCounter()  # bad training examples per reason, examples read
        self.val_skipped: dict[str, int] = {}  # bad validation examples of the last pass
        self._val_pass: dict[str, int] = {}
        self.stopped: tuple[str, str] | None = None  # (checkpoint stem, one-line reason)

    def _count_data(self, batch: dict[str, Any]) -> None:
        """Add the batch's skipped examples; stop when too large a fraction of them was bad."""
        self.counter.add(
            batch.get("skipped", {}), batch.get("samples_read", 0), batch.get("skip_examples")
        )
        limit, size = self.cfg.data.max_skipped_fraction, self.cfg.training.batch_size
        reason = self.counter.check(self, limit, "data.max_skipped_fraction", size)
        if reason is not None:
            self.stopped = ("bad-data-stop", reason)
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["flava_counters"] = self.counter.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.counter.load_state_dict(checkpoint.get("flava_counters", {}))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for a collated batch."""
        return self.model(**{key: batch[key] for key in INPUT_KEYS if key in batch})

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.batches_seen = int(batch["batch_index"]) + 1
        self._count_data(batch)
        loss = task_loss(self(batch), batch["targets"], self.cfg.task.type)
        size = batch["targets"].shape[0]
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=size)
        return loss

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        for reason, n in batch.get("skipped", {}).items():
            self._val_pass[reason] = self._val_pass.get(reason, 0) + int(n)
        targets = batch["targets"]
        if targets.shape[0] == 0:
            return
        logits = self(batch)
        loss = task_loss(logits, targets, self.cfg.task.type)
        self.metrics[dataloader_idx].update(logits, targets)
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
        for prefix, metrics in zip(self.prefixes, self.metrics, strict=True):
            for name, value in metrics.compute().items():  # synced across processes
                self.log(f"{prefix}/{name}", value, add_dataloader_idx=False)
            metrics.reset()

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_with_schedule(
            self.model.named_parameters(), self.cfg.training, self.device, self.trainer.max_steps
        )
