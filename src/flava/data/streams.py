"""Readers of streamed sources whose position is exact, O(shards) and valid at any process count.

A streamed source (tar shards, a streamed Hugging Face set) is read by many readers: every
process (rank) times every DataLoader worker. In epoch `e` all readers agree on one seeded
permutation of the shards and take their part of it (by rank, then by worker), so an epoch reads
every sample once. What a reader will read in an epoch is its *plan*, a list of `Piece`s: a shard,
and which of its samples (by offset: the sample's index among the shard's samples of the kind).

A reader's position is a small dict (`StreamReader.state`): the epoch, the piece it is in, the
offset it has read up to, and the shuffle buffer as (shard, offset) references with the buffer's
generator state. Restoring it re-reads only the shards those references point into and the
current shard up to the offset: the cost of a resume does not grow with the run.

With another number of readers (processes x workers), `elastic_states` turns the saved positions
into new plans: what every old reader left of its epoch (buffered samples, the rest of its current
shard, its shards not started) is dealt to the new readers, so the epoch ends with every sample
read exactly once; later epochs are split the new way. Resampled sources (shards drawn with
replacement, no epochs) resume exactly at the same layout and start fresh draws at another.
"""

from __future__ import annotations

import bisect
import collections
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flava.data.sources.errors import UnreadableShard
from flava.data.sources.readers import StreamingSource, describe
from flava.data.sources.skips import SkipLog

log = logging.getLogger(__name__)

# Consecutive epochs without a single record after which a reader gives up on a stream.
_EMPTY_EPOCHS = 3
# A record leaves the shuffle buffer at the latest this many buffer sizes after it entered (the
# random choice would keep ~2% of them longer): a resume then reopens only recent shards.
_MAX_AGE = 4


def is_iterable(source: Any) -> bool:
    """Whether `source` is read as a stream (a `StreamingSource`: tar shards, a streamed Hugging
    Face set) rather than by index (an `IndexedSource`)."""
    return isinstance(source, StreamingSource)


@dataclass(frozen=True)
class Piece:
    """Samples of one shard a reader reads: offsets >= `start` with offset % `stride` == `phase`
    (readers sharing a shard), or only the offsets listed in `only` (leftovers of a buffer)."""

    shard: int
    start: int = 0
    stride: int = 1
    phase: int = 0
    only: tuple[int, ...] | None = None

    def wants(self, offset: int) -> bool:
        """Whether the sample at `offset` belongs to this piece."""
        if self.only is not None:
            i = bisect.bisect_left(self.only, offset)
            return i < len(self.only) and self.only[i] == offset
        return offset >= self.start and offset % self.stride == self.phase

    def first(self) -> int:
        """The first offset worth reading from."""
        return self.only[0] if self.only else self.start

    def done(self, offset: int) -> bool:
        """Whether nothing of the piece is left at or after `offset`."""
        return self.only is not None and (not self.only or offset > self.only[-1])

    def rest(self, offset: int) -> Piece | None:
        """The part of the piece at or after `offset` (None when nothing is left)."""
        if self.only is not None:
            left = tuple(o for o in self.only if o >= offset)
            return Piece(self.shard, only=left) if left else None
        return Piece(self.shard, max(self.start, offset), self.stride, self.phase)

    def to_list(self) -> list[Any]:
        """Plain values for a checkpoint."""
        return [self.shard, self.start, self.stride, self.phase, list(self.only or [])]

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> Piece:
        """The inverse of `to_list` (an empty `only` list is no list)."""
        shard, start, stride, phase, only = values
        return cls(int(shard), int(start), int(stride), int(phase), tuple(only) or None)


@dataclass(frozen=True)
class ReaderKey:
    """One reader of an iterable source: the kind and index of the source, the process (rank)
    and the DataLoader worker (reader). Checkpoints name it "kind/source/rank/reader" (`str`,
    `parse`: the one place that formats and reads the name)."""

    kind: str
    source: int
    rank: int
    reader: int

    def __str__(self) -> str:
        return f"{self.kind}/{self.source}/{self.rank}/{self.reader}"

    @classmethod
    def parse(cls, name: str) -> ReaderKey:
        """The key named `name` in a checkpoint."""
        kind, source, rank, reader = name.split("/")
        return cls(kind, int(source), int(rank), int(reader))

    def same_stream(self, other: ReaderKey) -> bool:
        """Whether both keys are readers of one source."""
        return (self.kind, self.source) == (other.kind, other.source)


@dataclass(frozen=True)
class Buffered:
    """A record in a reader's shuffle buffer: where it was read (shard, offset), the record, and
    its serial number among the records put in the buffer this epoch (its age)."""

    shard: int
    offset: int
    record: Any
    serial: int


@dataclass(frozen=True)
class Layout:
    """Which reader of how many: rank of `world` processes, worker `reader` of `readers`."""

    rank: int
    world: int
    reader: int
    readers: int

    @property
    def part(self) -> int:
        """The reader's global index (rank-major)."""
        return self.rank * self.readers + self.reader

    @property
    def parts(self) -> int:
        """Readers in all."""
        return self.world * self.readers


def stream_seed(seed: int, stream_key: tuple[int, int]) -> list[int]:
    """The seed of one stream's shard orders: the run's seed and the (kind, source) key."""
    return [int(seed), 0x5A3D, *(int(k) for k in stream_key)]


def epoch_plan(
    shards: int, resampled: bool, seed: list[int], epoch: int, layout: Layout
) -> list[Piece]:
    """The pieces one reader reads in `epoch` when nothing was resumed at another layout.

    Shards are permuted from (seed, epoch), the same for every reader, then split by rank and
    worker. With fewer shards than readers, reader p reads shard p mod n and keeps every k-th
    sample of it (k readers share it). Resampled sources draw the reader's shards with
    replacement from (seed, rank, reader, epoch).
    """
    if resampled:
        draw = np.random.default_rng([*seed, layout.rank, layout.reader, epoch])
        count = max(1, shards // layout.parts)
        return [Piece(int(s)) for s in draw.integers(shards, size=count)]
    order = [int(i) for i in np.random.default_rng([*seed, epoch]).permutation(shards)]
    if shards < layout.parts:
        p = layout.part
        sharers = len(range(p % shards, layout.parts, shards))
        return [Piece(order[p % shards], stride=sharers, phase=p // shards)]
    return [Piece(s) for s in order[layout.rank :: layout.world][layout.reader :: layout.readers]]


class StreamReader:
    """Endless records of one reader of an iterable source, with an exact, small position.

    `state()` after any record is enough to continue with the next one (`state=` of a new
    reader). Bad shards are skipped and counted in `skips` (`shard_unreadable`).
    """

    def __init__(
        self,
        source: StreamingSource,
        kind: str,
        seed: int,
        stream_key: tuple[int, int],
        layout: Layout,
        state: dict[str, Any] | None = None,
        skips: SkipLog | None = None,
    ) -> None:
        self.source, self.kind, self.layout = source, kind, layout
        self.seed = stream_seed(seed, stream_key)
        self.shards = source.num_shards()
        if self.shards < 1:
            raise ValueError(f"{describe(source)} has no shards")
        self.skips = skips if skips is not None else SkipLog()
        self.size = int(source.shuffle_buffer)
        state = dict(state or {})
        self.plans = {int(e): [Piece.from_list(p) for p in ps] for e, ps in state.get("plans", [])}
        self.epoch = int(state.get("epoch", 0))
        self.piece = int(state.get("piece", 0))
        self.offset = int(state.get("offset", -1))
        self.yielded = int(state.get("yielded", 0))  # records handed out in this epoch
        self.empty = int(state.get("empty", 0))  # epochs in a row that handed out nothing
        self.draining = bool(state.get("draining", False))
        self.rng = self._epoch_rng()
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        self.inserted = int(state.get("inserted", 0))  # records put in the buffer this epoch
        self.buffer = self._restore(state.get("buffer", []))
        self._ages = collections.deque(sorted((e.serial, j) for j, e in enumerate(self.buffer)))
        self._open: Iterator[tuple[int, Any]] | None = None

    def _epoch_rng(self) -> np.random.Generator:
        layout = self.layout
        return np.random.default_rng([*self.seed, 0xB0F, layout.rank, layout.reader, self.epoch])

    def plan(self, epoch: int) -> list[Piece]:
        """The pieces of `epoch` (an elastic resume's leftovers, else the epoch's own split)."""
        if epoch in self.plans:
            return self.plans[epoch]
        return epoch_plan(self.shards, self.source.resampled, self.seed, epoch, self.layout)

    def state(self) -> dict[str, Any]:
        """The position after the last record handed out: plain values, O(shards + buffer)."""
        layout = self.layout
        return {
            "shards": self.shards,
            "layout": [layout.rank, layout.world, layout.reader, layout.readers],
            "resampled": bool(self.source.resampled),
            "epoch": self.epoch,
            "piece": self.piece,
            "offset": self.offset,
            "yielded": self.yielded,
            "empty": self.empty,
            "draining": self.draining,
            "inserted": self.inserted,
            "buffer": [[e.shard, e.offset, e.serial] for e in self.buffer],
            "rng": self.rng.bit_generator.state,
            "plans": [[e, [p.to_list() for p in ps]] for e, ps in self.plans.items()],
        }

    def _restore(self, refs: Sequence[Sequence[int]]) -> list[Buffered]:
        """The buffered records named by (shard, offset, serial) references, read again."""
        wanted: dict[int, set[int]] = {}
        for shard, offset, _ in refs:
            wanted.setdefault(int(shard), set()).add(int(offset))
        found: dict[tuple[int, int], Any] = {}
        for shard, offsets in wanted.items():
            try:
                for offset, record in self.source.shard_records(shard, self.kind, min(offsets)):
                    if offset in offsets:
                        found[shard, offset] = record
                    if offset >= max(offsets):
                        break
            except UnreadableShard as exc:
                self.skips.add(exc, f"a buffered {self.kind} shard of {describe(self.source)}")
        keys = [(int(s), int(o), int(n)) for s, o, n in refs]
        return [Buffered(s, o, found[s, o], n) for s, o, n in keys if (s, o) in found]

    def _incoming(self) -> tuple[int, int, Any] | None:
        """The next record of the epoch's plan as (shard, offset, record); None at its end."""
        plan = self.plan(self.epoch)
        while self.piece < len(plan):
            piece = plan[self.piece]
            if self._open is None and not piece.done(self.offset + 1):
                start = max(self.offset + 1, piece.first())
                self._open = self.source.shard_records(piece.shard, self.kind, start)
            try:
                for offset, record in self._open or ():
                    self.offset = offset
                    if piece.wants(offset):
                        return piece.shard, offset, record
                    if piece.done(offset + 1):
                        break
            except UnreadableShard as exc:
                self.skips.add(exc, f"a {self.kind} shard of {describe(self.source)}")
            self._close()
            self.piece, self.offset = self.piece + 1, -1
        return None

    def _close(self) -> None:
        close = getattr(self._open, "close", None)
        if close is not None:
            close()  # ends a pipe: command or an open connection now, not at garbage collection
        self._open = None

    def __iter__(self) -> StreamReader:
        return self

    def __next__(self) -> Any:
        while True:
            if self.draining:
                if self.buffer:
                    self.yielded += 1
                    return self.buffer.pop(0).record
                self._next_epoch()
                continue
            incoming = self._incoming()
            if incoming is None:
                order = self.rng.permutation(len(self.buffer))
                self.buffer = [self.buffer[int(j)] for j in order]
                self.draining = True
                continue
            if self.size <= 1:
                self.yielded += 1
                return incoming[2]  # (shard, offset, record)
            entry = Buffered(*incoming, self.inserted)
            self.inserted += 1
            if len(self.buffer) < self.size:
                self._ages.append((entry.serial, len(self.buffer)))
                self.buffer.append(entry)
                continue
            j = self._slot(entry.serial)
            out, self.buffer[j] = self.buffer[j], entry
            self._ages.append((entry.serial, j))
            self.yielded += 1
            return out.record

    def _slot(self, serial: int) -> int:
        """The buffer slot a new record replaces: random, unless the oldest is too old."""
        while self._ages and self.buffer[self._ages[0][1]].serial != self._ages[0][0]:
            self._ages.popleft()  # that record has left the buffer already
        if self._ages and serial - self._ages[0][0] >= _MAX_AGE * self.size:
            return self._ages.popleft()[1]
        return int(self.rng.integers(self.size))

    def _next_epoch(self) -> None:
        if self.epoch not in self.plans:  # an elastic resume's leftovers may be empty
            self.empty = 0 if self.yielded else self.empty + 1
        if self.empty >= _EMPTY_EPOCHS:
            layout = self.layout
            raise ValueError(
                f"{describe(self.source)} yields no {self.kind} samples for rank {layout.rank} "
                f"reader {layout.reader}"
            )
        self.plans.pop(self.epoch, None)
        self.epoch += 1
        self.piece, self.offset, self.yielded, self.draining = 0, -1, 0, False
        self.inserted, self._ages = 0, collections.deque()
        self.rng = self._epoch_rng()


def warn_shared_shards(source: StreamingSource, readers: int) -> None:
    """Log once that `readers` (processes x workers) share fewer shards."""
    shards = source.num_shards()
    if source.resampled or shards >= readers:
        return
    log.warning(
        "%s has %d shard(s) for %d readers (processes x workers): readers share shards and "
        "each reads only its part; write at least %d shards for a shard per reader",
        describe(source),
        shards,
        readers,
        readers,
    )


def _left_in_epoch(state: dict[str, Any], plan: list[Piece]) -> list[Piece]:
    """What a saved reader had not handed out of its epoch: buffer, current shard, the rest."""
    buffered: dict[int, list[int]] = {}
    for shard, offset, *_ in state.get("buffer", []):
        buffered.setdefault(int(shard), []).append(int(offset))
    left = [Piece(s, only=tuple(sorted(o))) for s, o in sorted(buffered.items())]
    if state.get("draining"):
        return left
    piece, offset = int(state.get("piece", 0)), int(state.get("offset", -1))
    if piece < len(plan):
        rest = plan[piece].rest(offset + 1)
        left += [rest] if rest is not None else []
        left += plan[piece + 1 :]
    return left


def elastic_states(
    saved: Sequence[dict[str, Any]], source: StreamingSource, seed: list[int], layout: Layout
) -> tuple[dict[str, Any], str]:
    """The starting state of one new reader at `layout` from the states of all readers of the
    stream at another layout, and a short account of what is carried over.

    Epoch-based sources: for each epoch from the oldest saved reader's to the newest's, the
    pieces no old reader handed out are dealt to the new readers (piece i to reader i mod n);
    after those epochs the new split applies. Resampled sources start fresh draws after the
    newest saved epoch.
    """
    last = max(int(s.get("epoch", 0)) for s in saved)
    shards = source.num_shards()
    if source.resampled or any(int(s.get("shards", shards)) != shards for s in saved):
        why = "resampled: fresh draws" if source.resampled else "shard count changed: new epoch"
        return {"epoch": last + 1}, f"{why} from epoch {last + 1}"
    first = min(int(s.get("epoch", 0)) for s in saved)
    plans: dict[int, list[Piece]] = {}
    for e in range(first, last + 1):
        pieces: list[Piece] = []
        for s in saved:
            epoch = int(s.get("epoch", 0))
            if epoch > e:
                continue
            old = Layout(*(int(v) for v in s["layout"]))
            own = {int(x): [Piece.from_list(p) for p in ps] for x, ps in s.get("plans", [])}
            plan = own[e] if e in own else epoch_plan(shards, False, seed, e, old)
            pieces += _left_in_epoch(s, plan) if epoch == e else plan
        pieces.sort(key=lambda p: (p.shard, p.start, p.phase, p.only or ()))
        plans[e] = pieces
    mine = {e: ps[layout.part :: layout.parts] for e, ps in plans.items()}
    state = {"epoch": first, "plans": [[e, [p.to_list() for p in ps]] for e, ps in mine.items()]}
    partial = sum(1 for ps in plans.values() for p in ps if p.start or p.only is not None)
    whole = sum(len(ps) for ps in plans.values()) - partial
    epochs = f"{first}-{last}" if last > first else str(first)
    return state, f"epoch {epochs} finished from {whole} unread + {partial} partly read shard(s)"
