"""The two reader interfaces: `IndexedSource` (random access) and `StreamingSource` (shards).

Random-access readers give `__len__` and `sample(index)`; streamed ones give `num_shards` and
`shard_samples(shard)` and are read in order by `flava.data.streams.StreamReader`, with random
access to a preview prefix. Both yield `Sample`s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from flava.data.sources.errors import UnreadableShard
from flava.data.sources.sample import Sample
from flava.objectives.kinds import Kind

log = logging.getLogger("flava.data.sources")


class IndexedSource:
    """Random-access base: subclasses give `__len__` and `sample(index)`."""

    kinds: frozenset[str] = frozenset(Kind)
    class_names: list[str] | None = None
    """Names of the integer labels in order, where the data names them (folders, ClassLabel)."""
    numbered_classes: list[str] | None = None
    """The classes a type's labels number, where the type fixes them (GLUE, torchvision,
    SNLI-VE, Hateful Memes, image folders); None: classes are named by the labels as read
    (`flava.data.sources.labels.space_of`)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, index: int) -> Sample:
        """The raw sample at `index` (all its texts, encoded image, label)."""
        raise NotImplementedError

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Sample:
        """Sample `index` decoded for `kind` (`Sample.decoded`)."""
        return self.sample(index).decoded(kind, rng)

    def labels(self) -> Sequence[Any]:
        """The label field of every sample, as read (fine-tuning builds its classes from them)."""
        return [self.sample(i).raw_label for i in range(len(self))]

    def retrieval_set(self, size: int | None = None) -> IndexedSource:
        """The images (with all their captions) that retrieval ranks: the first `size` samples
        (all when None)."""
        return capped(self, size)

    def describe(self) -> str:
        """A short description (logs, error messages, shard manifests)."""
        return type(self).__name__


class SampleList(IndexedSource):
    """Samples held in memory (generated scenes, a subset of another source)."""

    def __init__(self, samples: list[Sample], name: str = "samples") -> None:
        self.samples, self.name = samples, name

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, index: int) -> Sample:
        """Sample `index`."""
        return self.samples[index]

    def describe(self) -> str:
        """Name and size."""
        return f"{self.name} ({len(self)})"


class StreamingSource:
    """Base of streamed sources: shards of `Sample`s, plus random access to a preview prefix."""

    kinds: frozenset[str] = frozenset(Kind)
    class_names: list[str] | None = None
    numbered_classes: list[str] | None = None
    """As `IndexedSource.numbered_classes` (GLUE read as a stream)."""

    def __init__(
        self, shuffle_buffer: int = 1000, resampled: bool = False, preview_size: int = 1024
    ) -> None:
        self.shuffle_buffer = int(shuffle_buffer)
        self.resampled = bool(resampled)
        self.preview_size = int(preview_size)
        self.preview_kind: str | None = None
        self._preview: list[Sample] | None = None

    def num_shards(self) -> int:
        """Number of shards the stream is split into."""
        raise NotImplementedError

    def shard_samples(self, shard: int) -> Iterator[Sample]:
        """Raw samples of one shard, in order."""
        raise NotImplementedError

    def shard_records(self, shard: int, kind: str, start: int = 0) -> Iterator[tuple[int, Sample]]:
        """(offset, sample) of the samples of `kind` ("any": every non-empty one) of one shard,
        from offset `start` on; the offset counts the shard's samples of `kind` from 0, so it
        names one sample for good. Raises `UnreadableShard` when the shard cannot be read."""
        offset = 0
        for sample in self.shard_samples(shard):
            if kind == "any":
                wanted = sample.image is not None or bool(sample.texts)
            else:  # a bad one is yielded too: it is skipped and counted when decoded
                wanted = sample.has(kind) or sample.problem(kind) is not None
            if not wanted:
                continue
            if offset >= start:
                yield offset, sample
            offset += 1

    def records(self, shards: Sequence[int], kind: str) -> Iterator[Sample]:
        """Samples of `kind` of the given shards, in order (an unreadable shard is logged)."""
        for shard in shards:
            try:
                for _, sample in self.shard_records(shard, kind):
                    yield sample
            except UnreadableShard as exc:
                log.warning("skipping the rest of a shard: %s", exc)

    def decode(self, record: Sample, kind: str, rng: np.random.Generator) -> Sample:
        """One record decoded for `kind` (`Sample.decoded`)."""
        return record.decoded(kind, rng)

    def preview(self) -> list[Sample]:
        """The first `preview_size` samples (of `preview_kind`, if set), read once."""
        if self._preview is None:
            out: list[Sample] = []
            if self.preview_size > 0:
                for sample in self.records(range(self.num_shards()), self.preview_kind or "any"):
                    out.append(sample)
                    if len(out) >= self.preview_size:
                        break
            self._preview = out
        return self._preview

    def __len__(self) -> int:
        return len(self.preview())

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Sample:
        """Preview sample `index` decoded for `kind` (`Sample.decoded`)."""
        return self.preview()[index].decoded(kind, rng)

    def sample(self, index: int) -> Sample:
        """Preview sample `index`."""
        return self.preview()[index]

    def labels(self) -> Sequence[Any]:
        """The label field of every preview sample, as read."""
        return [s.raw_label for s in self.preview()]

    def retrieval_set(self, size: int | None = None) -> IndexedSource | StreamingSource:
        """The first `size` preview samples (all when None) as a retrieval set."""
        return capped(self, size)

    def describe(self) -> str:
        """A short description (logs, error messages)."""
        return type(self).__name__

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_preview"] = None  # workers do not need the preview; keep pickles small
        return state


def capped(source: Any, size: int | None) -> Any:
    """The first `size` samples of a random-access source (or a stream's preview), held in
    memory; the source itself when None or when it holds no more."""
    if size is None or size >= len(source):
        return source
    return SampleList([source.sample(i) for i in range(size)], source.describe())


def describe(source: Any) -> str:
    """A source's own description, else its type name."""
    text = getattr(source, "describe", None)
    return text() if callable(text) else type(source).__name__
