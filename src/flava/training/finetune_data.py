"""The data of a fine-tuning run: collation into a `FinetuneBatch`, the endless training batches
indexed by global batch number (exact resume), the validation sets and the DataModule.

Training batch b reads stream positions b*B*W + rank*B ... of the per-epoch permutations of
`flava.data.order` (B: batch size, W: processes), so the data's position is the batch index and
each process and DataLoader worker takes its own share without communicating. A bad training
example is replaced by a randomly drawn one and counted; a bad validation example is left out
and counted (`FinetuneBatch.tally`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch

from flava.config import FinetuneConfig
from flava.data.batch import FinetuneBatch, ReadTally
from flava.data.order import epoch_order
from flava.data.sources import SAMPLE_ERRORS, Sample, SkipLog, robust_read, skip_reason
from flava.data.tokenizer import FlavaTokenizer
from flava.data.transforms import ImageTransform


class Collator:
    """Decoded samples -> a `FinetuneBatch` (pixels and / or tokens, targets)."""

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
    ) -> FinetuneBatch:
        """Collate; `generator` drives random crops / flips of training images. Failed examples
        (`BadSample` and friends, from `UsableExamples`) are left out and counted in the tally."""
        skipped = Counter(skip_reason(e) for e in examples if isinstance(e, BaseException))
        examples = [e for e in examples if not isinstance(e, BaseException)]
        tally = ReadTally(skipped=dict(skipped))
        if not examples:
            return FinetuneBatch({}, torch.empty(0), tally=tally)
        inputs: dict[str, torch.Tensor] = {}
        if self.modality in ("image", "multimodal"):
            views = self.transform.batch([e.decoded_image for e in examples], generator=generator)
            inputs["pixel_values"] = views["pixel_values"]
        if self.modality in ("text", "multimodal"):
            texts = [e.text or "" for e in examples]
            pairs = [e.pair for e in examples]
            second = None if all(p is None for p in pairs) else [p or "" for p in pairs]
            tok = self.tokenizer(texts, second, max_length=self.max_length)
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                inputs[key] = tok[key]
        return FinetuneBatch(inputs, self.targets([e.target for e in examples]), tally=tally)

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
        start = (batch_index * self.world_size + self.rank) * self.batch_size
        return epoch_order(start, self.batch_size, len(self.dataset), (self.seed,))

    def batch(self, batch_index: int) -> FinetuneBatch:
        """Global batch `batch_index` (this process's share), collated."""
        generator = torch.Generator().manual_seed(
            int(np.random.default_rng([self.seed, batch_index, self.rank]).integers(2**62))
        )
        rng = np.random.default_rng([self.seed, batch_index, self.rank, 0xBAD])
        indices = self.indices(batch_index)
        examples = [self._example(int(i), rng) for i in indices]
        out = self.collate(examples, generator)
        skipped = self.skips.take()
        out.index = batch_index
        out.tally = ReadTally(
            skipped=skipped,
            samples_read=len(indices) + sum(skipped.values()),
            skip_examples=self.skips.take_examples(),
        )
        return out

    def _example(self, index: int, rng: np.random.Generator) -> Sample:
        """Sample `index` of the dataset; a bad one is counted and replaced by a randomly drawn
        one."""
        count = len(self.dataset)
        return robust_read(
            self.dataset.__getitem__, count, index, rng, self.skips, "training example"
        )

    def __iter__(self) -> Iterator[FinetuneBatch]:
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
        cfg: FinetuneConfig,
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

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch on its way to its step moves the data position past it."""
        if self.trainer is not None and self.trainer.training:
            self.start_batch = batch.index + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The data position: index of the next training batch (saved in every checkpoint)."""
        return {"start_batch": self.start_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start_batch = int(state.get("start_batch", 0))
