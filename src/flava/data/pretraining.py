"""Pretraining input pipeline: sources -> transforms -> masking -> collate -> per-step mixing.

Each step's whole batch comes from one kind of source ("image", "text" or "vl" pairs), drawn
with the configured probabilities (the paper's 0.15 / 0.15 / 0.70) or round-robin. The kind of
global batch `b` is a pure function of (seed, b), so every process and every DataLoader worker
agrees on it without communicating. Within a kind, samples are read in a per-epoch permutation
and each process takes its own slice of every batch, so processes see distinct samples. The
position of the stream is the batch index, which makes exact resume a matter of starting at
the right `b`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from flava.data.tokenizer import FlavaTokenizer
from flava.data.transforms import ImageTransform
from flava.objectives.masking import BlockMaskGenerator, mask_tokens

KINDS = ("image", "text", "vl")
_CHUNK = 1024


@dataclass
class Item:
    """One raw sample: an image, a text, or both."""

    image: Image.Image | None = None
    text: str | None = None


class Source(Protocol):
    """A random-access dataset that yields `Item`s of the kinds it supports."""

    kinds: frozenset[str]

    def __len__(self) -> int: ...

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Item: ...


class SceneSource:
    """The embedded generated scenes (flava.data.scenes): images, captions, pairs."""

    kinds = frozenset(KINDS)

    def __init__(self, split: str, size: int, image_size: int, seed: int = 0) -> None:
        from flava.data.scenes import SceneDataset

        self.scenes = SceneDataset(split=split, size=size, image_size=image_size, seed=seed)

    def __len__(self) -> int:
        return len(self.scenes)

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Item:
        """Scene `index` as an image, one of its captions, or both."""
        scene = self.scenes[index]
        caption = scene.captions[int(rng.integers(len(scene.captions)))]
        return Item(
            image=scene.image if kind in ("image", "vl") else None,
            text=caption if kind in ("text", "vl") else None,
        )


class BatchBuilder:
    """Turns a list of `Item`s of one kind into a model batch (transforms, masks, tokens)."""

    def __init__(
        self,
        tokenizer: FlavaTokenizer,
        transform: ImageTransform,
        mask_generator: BlockMaskGenerator,
        text_max_length: int = 77,
        mlm_probability: float = 0.15,
        whole_word_masking: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.transform = transform
        self.mask_generator = mask_generator
        self.text_max_length = text_max_length
        self.mlm_probability = mlm_probability
        self.whole_word_masking = whole_word_masking

    def images(
        self, images: Sequence[Image.Image], generator: torch.Generator, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """pixel_values [B, 3, S, S] (+ codebook_pixel_values) and bool_masked_pos [B, N]."""
        views = [self.transform(image, generator=generator) for image in images]
        out = {key: torch.stack([v[key] for v in views]) for key in views[0]}
        out["bool_masked_pos"] = self.mask_generator.batch(len(images), rng)
        return out

    def texts(self, texts: Sequence[str], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, token_type_ids, input_ids_masked, mlm_labels [B, L]."""
        tok = self.tokenizer(
            list(texts), max_length=self.text_max_length, return_word_ids=self.whole_word_masking
        )
        masked, labels = mask_tokens(
            tok["input_ids"],
            tok["special_tokens_mask"],
            mask_token_id=self.tokenizer.mask_token_id,
            vocab_size=self.tokenizer.vocab_size,
            probability=self.mlm_probability,
            generator=generator,
            word_ids=tok.get("word_ids"),
        )
        return {
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "token_type_ids": tok["token_type_ids"],
            "input_ids_masked": masked,
            "mlm_labels": labels,
        }

    def __call__(
        self, items: Sequence[Item], kind: str, generator: torch.Generator, rng: np.random.Generator
    ) -> dict[str, Any]:
        """Collate one batch of `kind`."""
        batch: dict[str, Any] = {"kind": kind}
        if kind in ("image", "vl"):
            batch.update(self.images([i.image for i in items], generator, rng))
        if kind in ("text", "vl"):
            batch.update(self.texts([i.text for i in items], generator))
        return batch


@dataclass
class Stream:
    """The datasets of one kind with their sampling weights."""

    kind: str
    sources: list[Source]
    weights: list[float]


class MixedBatches(torch.utils.data.IterableDataset):
    """Endless batches, each of one kind, agreed across processes and workers (see module doc)."""

    def __init__(
        self,
        streams: dict[str, Stream],
        builder: BatchBuilder,
        batch_size: int,
        seed: int = 0,
        sampling: str = "probability",
        probabilities: dict[str, float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        if not streams:
            raise ValueError("no data: select at least one kind of source")
        self.streams = streams
        self.kinds = [k for k in KINDS if k in streams]
        self.builder = builder
        self.batch_size = batch_size
        self.seed = seed
        self.sampling = sampling
        probs = np.array([(probabilities or {}).get(k, 1.0) for k in self.kinds], dtype=float)
        if sampling == "probability" and (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(f"kind probabilities must be >= 0 with a positive sum, got {probs}")
        self.probabilities = probs / probs.sum()
        self.rank, self.world_size = rank, world_size
        self.start_batch = start_batch

    def plan(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(kind index, source index) of the batches chunk*_CHUNK ... (chunk+1)*_CHUNK - 1."""
        rng = np.random.default_rng([self.seed, 0x5EED, chunk])
        if self.sampling == "round_robin":
            start = chunk * _CHUNK
            kinds = (np.arange(start, start + _CHUNK) % len(self.kinds)).astype(np.int64)
        else:
            kinds = rng.choice(len(self.kinds), size=_CHUNK, p=self.probabilities)
        sources = np.zeros(_CHUNK, dtype=np.int64)
        for k, kind in enumerate(self.kinds):
            w = np.asarray(self.streams[kind].weights, dtype=float)
            if len(w) > 1:
                picks = rng.choice(len(w), size=_CHUNK, p=w / w.sum())
                sources = np.where(kinds == k, picks, sources)
        return kinds, sources

    def kind_of(self, batch_index: int) -> str:
        """Kind of global batch `batch_index` (identical on every process)."""
        kinds, _ = self.plan(batch_index // _CHUNK)
        return self.kinds[int(kinds[batch_index % _CHUNK])]

    def _indices(self, kind: str, source: int, used: int) -> np.ndarray:
        """Sample indices of this process for the `used`-th batch drawn from one source."""
        n = len(self.streams[kind].sources[source])
        per_batch = self.batch_size * self.world_size
        start = used * per_batch + self.rank * self.batch_size
        positions = np.arange(start, start + self.batch_size)
        epochs = positions // n
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            perm = np.random.default_rng([self.seed, KINDS.index(kind), source, int(epoch)])
            order = perm.permutation(n)
            sel = epochs == epoch
            out[sel] = order[positions[sel] % n]
        return out

    def batches(self, start: int = 0, step: int = 1, offset: int = 0) -> Iterator[dict[str, Any]]:
        """Batches start, start+... for which (b - offset) % step == 0 (one worker's share)."""
        used: dict[tuple[int, int], int] = {}
        b = 0
        while True:
            kinds, sources = self.plan(b // _CHUNK)
            for j in range(_CHUNK):
                key = (int(kinds[j]), int(sources[j]))
                count = used.get(key, 0)
                used[key] = count + 1
                index = b + j
                if index >= start and (index - offset) % step == 0:
                    yield self._build(index, self.kinds[key[0]], key[1], count)
            b += _CHUNK

    def _build(self, index: int, kind: str, source: int, used: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, index, self.rank])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        stream = self.streams[kind]
        items = [
            stream.sources[source].item(int(i), kind, rng)
            for i in self._indices(kind, source, used)
        ]
        batch = self.builder(items, kind, generator, rng)
        batch["batch_index"] = index
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.batches(self.start_batch, workers, self.start_batch + worker)


class FixedBatches(torch.utils.data.Dataset):
    """A fixed list of validation batches of one kind (deterministic transforms and masks)."""

    def __init__(
        self,
        stream: Stream,
        builder: BatchBuilder,
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.stream, self.builder = stream, builder
        self.batch_size, self.seed = batch_size, seed
        source = stream.sources[0]
        total = min(num_batches, len(source) // (batch_size * world_size))
        if total < 1:
            raise ValueError(
                f"validation {stream.kind} data has {len(source)} samples, fewer than one batch "
                f"of {batch_size} per process; lower training.batch_size or add samples"
            )
        self.num_batches = total
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, 0xE7A1, index, self.rank])
        generator = torch.Generator().manual_seed(index)
        start = (index * self.world_size + self.rank) * self.batch_size
        source = self.stream.sources[0]
        items = [
            source.item(i, self.stream.kind, rng) for i in range(start, start + self.batch_size)
        ]
        return self.builder(items, self.stream.kind, generator, rng)
