"""Pretraining input pipeline: sources -> transforms -> masking -> collate -> per-step mixing.

Each step's whole batch comes from one kind of source ("image", "text" or "vl" pairs), drawn
with the configured probabilities (the paper's 0.15 / 0.15 / 0.70) or round-robin. The kind of
global batch `b` is a pure function of (seed, b), so every process and every DataLoader worker
agrees on it without communicating. Within a kind, samples are read in a per-epoch permutation
and each process takes its own slice of every batch, so processes see distinct samples. The
position of the stream is the batch index, which makes exact resume a matter of starting at
the right `b`.

Sources come in two flavours. A `Source` is random access (`item(index, kind, rng)`); its
samples follow the per-epoch permutations above. An `IterableSource` can only be read in order
(tar shards, streamed Hugging Face sets): its shards are split first by process (rank), then by
reader (the residue class `b mod num_workers` that a DataLoader worker serves), each reader
streams its own shards through a shuffle buffer and pulls `batch_size` items whenever one of its
batches draws that source. Shards are reshuffled every epoch with a seed all readers share, so
within an epoch the readers' shards are disjoint and one pass reads every sample exactly once
(with fewer shards than readers, readers share a shard and split its samples). `resampled`
sources instead draw shards with replacement per reader (multi-node, no epochs). Resuming at
batch `b` replays each reader's stream up to the records it had consumed (read, not decoded);
resampled streams just start fresh draws.

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

import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from flava.data.sources.base import (
    SAMPLE_ERRORS,
    DataError,
    Item,
    SkipLog,
    describe,
    robust_item,
    skip_reason,
)
from flava.data.tokenizer import FlavaTokenizer
from flava.data.transforms import ImageTransform
from flava.objectives.masking import BlockMaskGenerator, mask_tokens

log = logging.getLogger(__name__)

KINDS = ("image", "text", "vl")
_CHUNK = 1024
# Consecutive epochs without a single record after which a reader gives up on a stream.
_EMPTY_EPOCHS = 3
# Consecutive records that fail to decode after which a stream is declared broken.
_MAX_FAILURES = 1000
# Keys of the per-sample random draws of training and validation batches.
_TRAIN_DRAWS = 0x7D5A
_VAL_DRAWS = 0xE7A1


class Source(Protocol):
    """A random-access dataset that yields `Item`s of the kinds it supports."""

    kinds: frozenset[str]

    def __len__(self) -> int: ...

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Item: ...


@runtime_checkable
class IterableSource(Protocol):
    """A dataset read in order from shards (tar files, streamed Hugging Face sets).

    `records(shards, kind)` yields the raw records of `kind` of the given shards in order;
    `decode(record, kind, rng)` turns one into an `Item` (raising OSError / ValueError for a
    corrupt record, which is then skipped). `shuffle_buffer` is the size of the sample shuffle
    buffer (<= 1: none); `resampled` draws shards with replacement instead of epochs.
    """

    kinds: frozenset[str]
    shuffle_buffer: int
    resampled: bool

    def num_shards(self) -> int: ...

    def records(self, shards: Sequence[int], kind: str) -> Iterator[Any]: ...

    def decode(self, record: Any, kind: str, rng: np.random.Generator) -> Item: ...


def is_iterable(source: Any) -> bool:
    """Whether `source` is read as a stream (an `IterableSource`) rather than by index."""
    return isinstance(source, IterableSource)


def reader_shards(
    order: Sequence[int], rank: int, world_size: int, reader: int, readers: int
) -> list[int]:
    """The shards of one reader: split by process (rank) first, then by reader (worker)."""
    return list(order[rank::world_size][reader::readers])


def shuffle_buffer(records: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Yield `records` in a locally shuffled order through a buffer of `size` records."""
    if size <= 1:
        yield from records
        return
    buffer: list[Any] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        j = int(rng.integers(size))
        out, buffer[j] = buffer[j], record
        yield out
    for j in rng.permutation(len(buffer)):
        yield buffer[int(j)]


def source_records(
    source: IterableSource,
    kind: str,
    seed: int,
    stream_key: tuple[int, int],
    rank: int = 0,
    world_size: int = 1,
    reader: int = 0,
    readers: int = 1,
    epochs: int | None = None,
    restart: int = 0,
) -> Iterator[Any]:
    """Endless (or `epochs`) records of one reader of an iterable source, shuffled per epoch.

    Shard order is permuted every epoch from (seed, stream_key, epoch), identical for all
    readers, then split by rank and reader. With fewer shards than readers (processes x
    workers), reader p reads shard p mod n and keeps its share of the records of the readers
    that share it. `resampled` sources draw their shards with replacement from
    (seed, stream_key, rank, reader, restart, epoch); `restart` gives a resumed run fresh draws.
    """
    n = source.num_shards()
    if n < 1:
        raise ValueError(f"{describe(source)} has no shards")
    parts, part = world_size * readers, rank * readers + reader
    shared = not source.resampled and n < parts
    if shared and part == 0:
        _warn_shared_shards(source, n, parts)
    sharers = len(range(part % n, parts, n))  # readers of the same shard (when shared)
    epoch, empty = 0, 0
    while epochs is None or epoch < epochs:
        draw = [seed, 0x5A3D, *stream_key]
        if source.resampled:
            shards = _resampled_shards(n, parts, [*draw, rank, reader, restart, epoch])
        elif shared:
            shards = [_epoch_order(n, [*draw, epoch])[part % n]]
        else:
            order = _epoch_order(n, [*draw, epoch])
            shards = reader_shards(order, rank, world_size, reader, readers)
        records = source.records(shards, kind)
        if shared and sharers > 1:
            records = (r for i, r in enumerate(records) if i % sharers == part // n)
        rng = np.random.default_rng([seed, 0xB0F, *stream_key, rank, reader, restart, epoch])
        count = 0
        for record in shuffle_buffer(records, int(source.shuffle_buffer), rng):
            count += 1
            yield record
        empty = 0 if count else empty + 1
        if empty >= _EMPTY_EPOCHS:
            raise ValueError(
                f"{describe(source)} yields no {kind} samples for rank {rank} reader {reader}"
            )
        epoch += 1


def _warn_shared_shards(source: IterableSource, shards: int, readers: int) -> None:
    """Log once that `readers` (processes x workers) share fewer `shards`."""
    log.warning(
        "%s has %d shard(s) for %d readers (processes x workers): readers share shards and "
        "each reads only its part; write at least %d shards for a shard per reader",
        describe(source),
        shards,
        readers,
        readers,
    )


def _epoch_order(shards: int, seed: list[int]) -> list[int]:
    """The epoch's permutation of the shard indices, the same for every reader."""
    return [int(i) for i in np.random.default_rng(seed).permutation(shards)]


def _resampled_shards(shards: int, readers: int, seed: list[int]) -> list[int]:
    """One reader's shards of a resampled source for an epoch: drawn with replacement."""
    draw = np.random.default_rng(seed)
    return [int(i) for i in draw.integers(shards, size=max(1, shards // readers))]


def sample_draws(
    seed: int, key: int, batch_index: int, positions: Sequence[int]
) -> tuple[list[np.random.Generator], list[torch.Generator]]:
    """Per-sample generators (numpy, torch) of the samples at `positions` of a global batch.

    Sample p's generators are seeded from (seed, key, batch_index, p) only, so they do not
    depend on which process builds the sample, nor on the other samples of its batch.
    """
    rngs = [np.random.default_rng([seed, key, batch_index, int(p)]) for p in positions]
    generators = [torch.Generator().manual_seed(int(r.integers(2**62))) for r in rngs]
    return rngs, generators


class BatchBuilder:
    """Turns a list of `Item`s of one kind into a model batch (transforms, masks, tokens).

    The random draws come from `generator` (torch: crops, flips, text masks) and `rng` (numpy:
    block masks): either one of each shared by the whole batch, drawn sample after sample, or a
    sequence of each with one per item (see `sample_draws`), so that an item's crop, flip and
    masks depend on its own generators only. Texts are padded to the batch's longest
    (`padding="longest"`) or to `text_max_length` (`"max_length"`); with per-item generators a
    text's masks are drawn over its own tokens, so they do not depend on the padding.
    """

    def __init__(
        self,
        tokenizer: FlavaTokenizer,
        transform: ImageTransform,
        mask_generator: BlockMaskGenerator,
        text_max_length: int = 77,
        mlm_probability: float = 0.15,
        whole_word_masking: bool = False,
        padding: str = "longest",
    ) -> None:
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.tokenizer = tokenizer
        self.transform = transform
        # Pairs are never flipped: a mirrored image contradicts "left of" / "right of" captions.
        self.pair_transform = copy.copy(transform)
        self.pair_transform.hflip = False
        self.mask_generator = mask_generator
        self.text_max_length = text_max_length
        self.mlm_probability = mlm_probability
        self.whole_word_masking = whole_word_masking
        self.padding = padding

    def images(
        self,
        images: Sequence[Image.Image],
        generator: torch.Generator | Sequence[torch.Generator],
        rng: np.random.Generator | Sequence[np.random.Generator],
        paired: bool = False,
    ) -> dict[str, torch.Tensor]:
        """pixel_values [B, 3, S, S] (+ codebook_pixel_values) and bool_masked_pos [B, N];
        `paired` images (with captions) are never flipped."""
        transform = self.pair_transform if paired else self.transform
        out = transform.batch(images, generator=generator)
        out["bool_masked_pos"] = self.mask_generator.batch(len(images), rng)
        return out

    def texts(
        self, texts: Sequence[str], generator: torch.Generator | Sequence[torch.Generator]
    ) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, token_type_ids, input_ids_masked, mlm_labels [B, L]."""
        tok = self.tokenizer(
            list(texts),
            max_length=self.text_max_length,
            padding=self.padding,
            return_word_ids=self.whole_word_masking,
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
        self,
        items: Sequence[Item],
        kind: str,
        generator: torch.Generator | Sequence[torch.Generator],
        rng: np.random.Generator | Sequence[np.random.Generator],
    ) -> dict[str, Any]:
        """Collate one batch of `kind` (one generator / rng for the batch, or one per item)."""
        batch: dict[str, Any] = {"kind": kind}
        if kind in ("image", "vl"):
            batch.update(self.images([i.image for i in items], generator, rng, kind == "vl"))
        if kind in ("text", "vl"):
            batch.update(self.texts([i.text for i in items], generator))
        return batch


@dataclass
class Stream:
    """The datasets of one kind with their sampling weights."""

    kind: str
    sources: list[Any]
    """`Source`s and / or `IterableSource`s."""
    weights: list[float]


class _CountedRecords:
    """An iterator of records that counts how many it has handed out (its stream position)."""

    def __init__(self, records: Iterator[Any], name: str, consumed: int = 0) -> None:
        self.records, self.name, self.consumed = records, name, consumed

    def __iter__(self) -> _CountedRecords:
        return self

    def __next__(self) -> Any:
        record = next(self.records)
        self.consumed += 1
        return record


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
        stream_records: dict[str, int] | None = None,
        accumulation: int = 1,
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
        # records consumed per reader of an iterable source ("kind/source/reader") at start
        self.stream_records = dict(stream_records or {})
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
        """Batches start, start+... for which (b - offset) % step == 0 (one worker's share).

        Iterable sources are read by reader `offset % step` of `step` (the residue class of the
        batches served, so a resumed worker continues the stream of the same batches).
        """
        used: dict[tuple[int, int], int] = {}
        mine: dict[tuple[int, int], int] = {}  # batches of this reader per (kind, source)
        readers: dict[tuple[int, int], Iterator[Any]] = {}
        b = 0
        while True:
            kinds, sources = self.plan(b // _CHUNK)
            for j in range(_CHUNK):
                key = (int(kinds[j]), int(sources[j]))
                count = used.get(key, 0)
                used[key] = count + 1
                index = b + j
                if (index - offset) % step:
                    continue
                kind = self.kinds[key[0]]
                source = self.streams[kind].sources[key[1]]
                if not is_iterable(source):
                    if index >= start:
                        yield self._build(index, kind, key[1], count)
                    continue
                if index < start:
                    mine[key] = mine.get(key, 0) + 1
                    continue
                if key not in readers:
                    readers[key] = self._reader(key, offset % step, step, mine.get(key, 0), start)
                yield self._build(index, kind, key[1], count, readers[key])
            b += _CHUNK

    def _reader(
        self, key: tuple[int, int], reader: int, readers: int, batches: int, start: int
    ) -> _CountedRecords:
        """Records of one iterable source for this reader, past those consumed before `start`.

        Epoch-based sources replay (read, not decode) the records consumed before a resume:
        the count saved in the checkpoint (`stream_records`, which includes skipped bad
        records), else `batches` full batches, so the run continues exactly; resampled sources
        start fresh draws instead (no replay).
        """
        kind = self.kinds[key[0]]
        source = self.streams[kind].sources[key[1]]
        restart = start if source.resampled else 0
        records = source_records(
            source, kind, self.seed, key, self.rank, self.world_size, reader, readers, None, restart
        )
        name = f"{kind}/{key[1]}/{reader}"
        consumed = 0
        if not source.resampled:
            consumed = self.stream_records.get(name, batches * self.batch_size) if start else 0
            for _ in range(consumed):
                next(records)
        return _CountedRecords(records, name, consumed)

    def _build(
        self,
        index: int,
        kind: str,
        source: int,
        used: int,
        records: _CountedRecords | None = None,
    ) -> dict[str, Any]:
        first = self.rank * self.batch_size  # position of our first sample in the global batch
        positions = range(first, first + self.batch_size)
        rngs, generators = sample_draws(self.seed, _TRAIN_DRAWS, index, positions)
        stream = self.streams[kind]
        src = stream.sources[source]
        if records is None:
            indices = self._indices(kind, source, used)
            items = [
                robust_item(src, int(i), kind, rng, self.skips) for i, rng in zip(indices, rngs)
            ]
        else:
            items, failures = [], 0
            while len(items) < self.batch_size:
                record = next(records)
                try:
                    items.append(src.decode(record, kind, rngs[len(items)]))
                    failures = 0
                except SAMPLE_ERRORS as exc:
                    failures += 1  # a bad record: skip it
                    self.skips.add(exc, f"a {kind} record of {describe(src)}")
                    if failures >= _MAX_FAILURES:
                        raise DataError(
                            f"{describe(src)}: {failures} {kind} records in a row could not be "
                            f"used (last: {skip_reason(exc)}); check the shards"
                        ) from None
        batch = self.builder(items, kind, generators, rngs)
        batch["batch_index"] = index
        skipped = self.skips.take()
        batch["skipped"] = skipped
        batch["samples_read"] = len(items) + sum(skipped.values())
        if records is not None:
            batch["stream_records"] = {records.name: records.consumed}
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
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

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[index] for index in range(self.num_batches))

    def __getitem__(self, index: int) -> dict[str, Any]:
        first = self.rank * self.batch_size
        positions = range(first, first + self.batch_size)
        rngs, generators = sample_draws(self.seed, _VAL_DRAWS, index, positions)
        start = index * self.world_size * self.batch_size + first
        source = self.stream.sources[0]
        items = [
            robust_item(source, start + j, self.stream.kind, rng) for j, rng in enumerate(rngs)
        ]
        return self.builder(items, self.stream.kind, generators, rngs)
