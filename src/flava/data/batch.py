"""What the data hands a training step: the model's tensors, apart from the record of how they
were read (skipped samples, sample keys, stream positions).

Lightning moves a `PretrainingBatch` or a `FinetuneBatch` to the device field by field (tensors
move, the rest stays); the objectives and the classifier see only the tensors, the run's counters
and checkpoints only `tally`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from flava.data.streams import ReaderKey


@dataclass
class ReadTally:
    """How one batch was read."""

    skipped: dict[str, int] = field(default_factory=dict)
    """Samples skipped as bad while reading the batch, per `SKIP_REASONS` entry."""
    samples_read: int = 0
    """Samples read for it, the skipped ones included."""
    keys: list[str] = field(default_factory=list)
    """Each sample's key in its source, in batch order."""
    epochs: list[int] | None = None
    """Each sample's epoch, for a streamed source (None: a random-access one)."""
    stream_states: dict[ReaderKey, dict[str, Any]] = field(default_factory=dict)
    """The position of the stream reader that served it (`StreamReader.state`), by its key."""
    skip_examples: dict[str, str] = field(default_factory=dict)
    """The first example of a reason its DataLoader worker met (`SkipLog.take_examples`)."""


@dataclass
class PretrainingBatch:
    """One batch of one kind ("image", "text" or "vl") for the pretraining step."""

    kind: str
    index: int
    """Index of the global batch (the stream's position; keys every random draw)."""
    tensors: dict[str, torch.Tensor]
    """pixel_values, bool_masked_pos, input_ids, ... (`flava.data.collate.BatchBuilder`)."""
    tally: ReadTally = field(default_factory=ReadTally)
    window: list[dict[str, Any]] | None = None
    """Under gradient accumulation: kind, batch_index and masks of each micro-batch of the step."""
    window_inputs: list[dict[str, torch.Tensor]] | None = None
    """With training.contrastive_accumulation, on a step's first pair micro-batch: every member's
    unmasked pairs (`flava.objectives.pretraining.CONTRASTIVE_INPUTS`)."""

    @property
    def size(self) -> int:
        """Samples in the batch (the first dimension of its first tensor)."""
        first = next((v for v in self.tensors.values() if isinstance(v, torch.Tensor)), None)
        return int(first.shape[0]) if first is not None else len(self.tally.keys)


@dataclass
class FinetuneBatch:
    """One fine-tuning batch: the classifier's inputs, the targets and how it was read.

    `batch[name]` reads an input tensor or "targets", as the model's keyword arguments name them.
    """

    inputs: dict[str, torch.Tensor]
    """pixel_values and / or input_ids, attention_mask, token_type_ids (those the task reads)."""
    targets: torch.Tensor
    """Class indices [B], regression values [B] or soft answer scores [B, A]."""
    index: int = -1
    """Index of the global training batch (the data's position; -1: a validation batch)."""
    tally: ReadTally = field(default_factory=ReadTally)
    """Examples skipped as bad (and, for a training batch, examples read)."""

    def __getitem__(self, name: str) -> torch.Tensor:
        """The input tensor `name`, or the targets."""
        return self.targets if name == "targets" else self.inputs[name]

    @property
    def size(self) -> int:
        """Examples in the batch."""
        return int(self.targets.shape[0])
