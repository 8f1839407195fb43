"""Per-step mixing of the pretraining sources: each step's batch of one kind, on every process.

Each step's whole batch comes from one kind of source ("image", "text" or "vl" pairs), drawn
with the configured weights (uniform unless given, as the original release draws its loaders) or
round-robin. The kind of global batch `b` is a pure function of (seed, b), so every process and
every DataLoader worker agrees on it without communicating. Within a kind, samples are read in a
per-epoch permutation and each process takes its own slice of every batch, so processes see
distinct samples. The position of the stream is the batch index, which makes exact resume a
matter of starting at the right `b`.

Sources come in two flavours. An `IndexedSource` is random access (`item(index, kind, rng)`); its
samples follow the per-epoch permutations above. A `StreamingSource` can only be read in order
(tar shards, streamed Hugging Face sets): each process has one `flava.data.streams.StreamReader`
per DataLoader worker (the worker serving the batches `b mod num_workers`), which pulls
`batch_size` records whenever one of its batches draws that source. Every batch carries its
reader's position (`stream_states`), and a checkpoint keeps every reader's of every process;
see `flava.data.streams` for how a resume restores them in O(shards), at any process count.

Every random choice of a sample (which caption, a replacement for a bad sample, its crop and
flip, its block mask, its text mask) is drawn from its own generators, keyed by (seed, batch
index, position of the sample in the global batch): sample j of rank r's share is at position
r * batch_size + j. So a global batch of a random-access source does not depend on how it is
split over processes: one process with batch size 2B builds the concatenation of what ranks 0
and 1 of two processes with batch size B build (text tensors up to trailing padding, as each
batch is padded to its longest text unless `BatchBuilder(padding="max_length")`; padding is
masked out everywhere). Iterable sources read different records on every rank, but use the same
per-sample keys. What is not split-invariant is what the model step does within a local batch
(ITM negatives are paired within it, `flava.objectives.pretraining.itm_pairing`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flava.data.batch import PretrainingBatch, ReadTally
from flava.data.collate import BatchBuilder, sample_draws
from flava.data.order import epoch_order
from flava.data.sources.errors import SAMPLE_ERRORS, DataError, skip_reason
from flava.data.sources.readers import describe
from flava.data.sources.skips import SkipLog, robust_item
from flava.data.streams import Layout, ReaderKey, StreamReader, is_iterable, warn_shared_shards
from flava.objectives.kinds import Kind

log = logging.getLogger(__name__)

KINDS = tuple(Kind)  # the order of the draws: image, text, vl
_CHUNK = 1024
# Consecutive records that fail to decode after which a stream is declared broken.
_MAX_FAILURES = 1000
# Keys of the per-sample random draws of training and validation batches.
_TRAIN_DRAWS = 0x7D5A
_VAL_DRAWS = 0xE7A1


@dataclass
class Stream:
    """The datasets of one kind with their sampling weights."""

    kind: Kind
    sources: list[Any]
    """`IndexedSource`s and / or `StreamingSource`s."""
    weights: list[float]


class MixedBatches(torch.utils.data.IterableDataset):
    """Endless batches, each of one kind, agreed across processes and workers (see module doc)."""

    def __init__(
        self,
        streams: dict[Kind, Stream],
        builder: BatchBuilder,
        batch_size: int,
        seed: int = 0,
        sampling: str = "probability",
        probabilities: dict[str, float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        stream_states: dict[ReaderKey, dict[str, Any]] | None = None,
        accumulation: int = 1,
        sample_positions: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if accumulation < 1:
            raise ValueError(f"accumulation must be >= 1, got {accumulation}")
        self.accumulation = accumulation
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
        # where each reader of an iterable source starts
        self.stream_states = dict(stream_states or {})
        # samples of each random-access source ("kind/source") consumed before start_batch, when
        # the run that consumed them had another global batch (None: the batches' own count)
        self.sample_positions = dict(sample_positions or {})
        self._used_at_start: dict[tuple[int, int], int] | None = None
        self.skips = SkipLog()

    def _drawn(self, chunk: int) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """(kind index, source picks per kind) drawn for the batches of one chunk."""
        rng = np.random.default_rng([self.seed, 0x5EED, chunk])
        if self.sampling == "round_robin":
            start = chunk * _CHUNK
            kinds = (np.arange(start, start + _CHUNK) % len(self.kinds)).astype(np.int64)
        else:
            kinds = rng.choice(len(self.kinds), size=_CHUNK, p=self.probabilities)
        picks: list[np.ndarray | None] = []
        for kind in self.kinds:
            w = np.asarray(self.streams[kind].weights, dtype=float)
            picks.append(rng.choice(len(w), size=_CHUNK, p=w / w.sum()) if len(w) > 1 else None)
        return kinds, picks

    def _window_kinds(self, chunk: int) -> np.ndarray:
        """Each batch's kind under accumulation: the kind drawn for its window's first batch
        (a window = the `accumulation` micro-batches of one optimizer step, one kind a step as
        in the paper; the ratios then hold per optimizer step)."""
        index = np.arange(chunk * _CHUNK, (chunk + 1) * _CHUNK)
        first = index - index % self.accumulation
        kinds = np.empty(_CHUNK, dtype=np.int64)
        for c in np.unique(first // _CHUNK):
            sel = first // _CHUNK == c
            kinds[sel] = self._drawn(int(c))[0][first[sel] % _CHUNK]
        return kinds

    def plan(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(kind index, source index) of the batches chunk*_CHUNK ... (chunk+1)*_CHUNK - 1."""
        kinds, picks = self._drawn(chunk)
        if self.accumulation > 1:
            kinds = self._window_kinds(chunk)
        sources = np.zeros(_CHUNK, dtype=np.int64)
        for k, pick in enumerate(picks):
            if pick is not None:
                sources = np.where(kinds == k, pick, sources)
        return kinds, sources

    def kind_of(self, batch_index: int) -> Kind:
        """Kind of global batch `batch_index` (identical on every process)."""
        kinds, _ = self.plan(batch_index // _CHUNK)
        return self.kinds[int(kinds[batch_index % _CHUNK])]

    def used_counts(self, end: int) -> dict[tuple[int, int], int]:
        """Batches drawn from each (kind, source) among the batches before `end`."""
        counts: dict[tuple[int, int], int] = {}
        for chunk in range((end + _CHUNK - 1) // _CHUNK):
            kinds, sources = self.plan(chunk)
            take = min(_CHUNK, end - chunk * _CHUNK)
            pairs, n = np.unique(
                np.stack([kinds[:take], sources[:take]]), axis=1, return_counts=True
            )
            for (k, s), c in zip(pairs.T.tolist(), n.tolist(), strict=True):
                counts[k, s] = counts.get((k, s), 0) + int(c)
        return counts

    def sample_position(self, key: tuple[int, int], used: int) -> int:
        """Samples of a random-access source consumed before its `used`-th batch (all ranks)."""
        per_batch = self.batch_size * self.world_size
        name = f"{self.kinds[key[0]]}/{key[1]}"
        if name not in self.sample_positions:
            return used * per_batch
        if self._used_at_start is None:
            self._used_at_start = self.used_counts(self.start_batch)
        start = self._used_at_start.get(key, 0)
        return self.sample_positions[name] + (used - start) * per_batch

    def sample_positions_at(self, end: int) -> dict[str, int]:
        """`sample_position` of every random-access source before batch `end` (checkpoints)."""
        out = {}
        for key, used in self.used_counts(end).items():
            kind = self.kinds[key[0]]
            if not is_iterable(self.streams[kind].sources[key[1]]):
                out[f"{kind}/{key[1]}"] = self.sample_position(key, used)
        return out

    def _indices(self, kind: Kind, source: int, used: int) -> np.ndarray:
        """Sample indices of this process for the `used`-th batch drawn from one source."""
        n = len(self.streams[kind].sources[source])
        key = (self.kinds.index(kind), source)
        start = self.sample_position(key, used) + self.rank * self.batch_size
        return epoch_order(start, self.batch_size, n, (self.seed, KINDS.index(kind), source))

    def batches(self, start: int = 0, step: int = 1, offset: int = 0) -> Iterator[PretrainingBatch]:
        """Batches start, start+... for which (b - offset) % step == 0 (one worker's share).

        Iterable sources are read by reader `offset % step` of `step` (the residue class of the
        batches served, so a resumed worker continues the stream of the same batches).
        """
        used: dict[tuple[int, int], int] = {}
        readers: dict[tuple[int, int], StreamReader] = {}
        b = 0
        while True:
            kinds, sources = self.plan(b // _CHUNK)
            for j in range(_CHUNK):
                key = (int(kinds[j]), int(sources[j]))
                count = used.get(key, 0)
                used[key] = count + 1
                index = b + j
                if (index - offset) % step or index < start:
                    continue
                kind = self.kinds[key[0]]
                source = self.streams[kind].sources[key[1]]
                if not is_iterable(source):
                    yield self._build(index, kind, key[1], count)
                    continue
                if key not in readers:
                    readers[key] = self.reader(key, offset % step, step)
                yield self._build(index, kind, key[1], count, readers[key])
            b += _CHUNK

    def reader_key(self, key: tuple[int, int], reader: int) -> ReaderKey:
        """The key of one reader of this process for an iterable source."""
        return ReaderKey(self.kinds[key[0]], key[1], self.rank, reader)

    def reader(self, key: tuple[int, int], reader: int, readers: int) -> StreamReader:
        """Reader `reader` of `readers` (workers) of this process for one iterable source,
        at the position it was given (`stream_states`), else at the start of the stream."""
        kind = self.kinds[key[0]]
        source = self.streams[kind].sources[key[1]]
        layout = Layout(self.rank, self.world_size, reader, readers)
        if layout.part == 0:
            warn_shared_shards(source, layout.parts)
        state = self.stream_states.get(self.reader_key(key, reader))
        return StreamReader(source, kind, self.seed, key, layout, state, self.skips)

    def _build(
        self,
        index: int,
        kind: Kind,
        source: int,
        used: int,
        records: StreamReader | None = None,
    ) -> PretrainingBatch:
        first = self.rank * self.batch_size  # position of our first sample in the global batch
        positions = range(first, first + self.batch_size)
        rngs, generators = sample_draws(self.seed, _TRAIN_DRAWS, index, positions)
        stream = self.streams[kind]
        src = stream.sources[source]
        if records is None:
            indices = self._indices(kind, source, used)
            items = [
                robust_item(src, int(i), kind, rng, self.skips)
                for i, rng in zip(indices, rngs, strict=True)
            ]
        else:
            items, failures, epochs = [], 0, []
            while len(items) < self.batch_size:
                record = next(records)
                try:
                    items.append(src.decode(record, kind, rngs[len(items)]))
                    epochs.append(records.epoch)
                    failures = 0
                except SAMPLE_ERRORS as exc:
                    failures += 1  # a bad record: skip it
                    self.skips.add(exc, f"a {kind} record of {describe(src)}")
                    if failures >= _MAX_FAILURES:
                        raise DataError(
                            f"{describe(src)}: {failures} {kind} records in a row could not be "
                            f"used (last: {skip_reason(exc)}); check the shards"
                        ) from None
        skipped = self.skips.take()
        tally = ReadTally(skipped, len(items) + sum(skipped.values()), [i.key for i in items])
        tally.skip_examples = self.skips.take_examples()
        if records is not None:
            name = self.reader_key((self.kinds.index(kind), source), records.layout.reader)
            tally.stream_states, tally.epochs = {name: records.state()}, epochs
        tensors = self.builder(items, kind, generators, rngs)
        return PretrainingBatch(kind, index, tensors, tally)

    def __iter__(self) -> Iterator[PretrainingBatch]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.batches(self.start_batch, workers, self.start_batch + worker)


class FixedBatches(torch.utils.data.IterableDataset):
    """A fixed list of validation batches of one kind (deterministic transforms and masks).

    Batch `index` holds samples index * global_batch ... of the source, this process's share
    at rank * batch_size, with per-sample draws keyed like training's (split-invariant).
    Iterable (`num_batches` long; no `__len__`, which Lightning warns about on iterables), so
    that Lightning leaves it whole: it is split over processes already, and a DistributedSampler
    on top gave each process only every W-th of its own batches.
    """

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

    def __iter__(self) -> Iterator[PretrainingBatch]:
        return (self[index] for index in range(self.num_batches))

    def __getitem__(self, index: int) -> PretrainingBatch:
        first = self.rank * self.batch_size
        positions = range(first, first + self.batch_size)
        rngs, generators = sample_draws(self.seed, _VAL_DRAWS, index, positions)
        start = index * self.world_size * self.batch_size + first
        source = self.stream.sources[0]
        items = [
            robust_item(source, start + j, self.stream.kind, rng) for j, rng in enumerate(rngs)
        ]
        tensors = self.builder(items, self.stream.kind, generators, rngs)
        keys = [i.key for i in items]
        return PretrainingBatch(self.stream.kind, index, tensors, ReadTally(keys=keys))
