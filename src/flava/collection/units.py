"""The pieces an embedding run is cut into, the same at any process count.

A unit is one output shard: `shard_size` consecutive records of a random-access source (unit u
holds records u*S .. u*S+S-1), or one input shard of a streamed source (webdataset tars, a
streamed dataset's shards), read in order. A unit is written whole (`layout.write_shard`), so a
resumed run, at any process count, embeds exactly the units whose table is missing: rank r of W
takes every W-th of them. Every record belongs to exactly one unit, so every record is embedded
once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flava.data.sources import SAMPLE_ERRORS, StreamingSource, UnreadableShard
from flava.data.sources.sample import Sample

log = logging.getLogger("flava")

Read = Callable[[], Sample]
"""Reads one record (a random-access source's `sample(i)`; a streamed sample as it came)."""


@dataclass
class Units:
    """How a source is cut into units (see the module doc)."""

    source: Any
    count: int
    shard_size: int
    streamed: bool

    @classmethod
    def of(cls, source: Any, shard_size: int) -> Units:
        """The units of `source`: input shards of a stream, blocks of `shard_size` records."""
        if isinstance(source, StreamingSource):
            return cls(source, source.num_shards(), shard_size, True)
        return cls(source, -(-len(source) // shard_size), shard_size, False)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must find unchanged: the stream's shards, or the record count."""
        if self.streamed:
            return {"streamed": True, "inputs": list(getattr(self.source, "urls", []))}
        return {"streamed": False, "records": len(self.source), "shard_size": self.shard_size}

    def size(self, unit: int) -> int | None:
        """Records of `unit` (None for a stream's shard: known once read)."""
        if self.streamed:
            return None
        return min(self.shard_size, len(self.source) - unit * self.shard_size)

    def where(self, unit: int) -> str:
        """What `unit` covers, for messages and each shard's counts."""
        if self.streamed:
            urls = getattr(self.source, "urls", None)
            return urls[unit] if urls else f"input shard {unit}"
        start = unit * self.shard_size
        return f"records {start}..{start + (self.size(unit) or 0) - 1}"

    def records(self, unit: int, skips: Any) -> Iterator[tuple[str, Read]]:
        """(where, reader) of each record of `unit`, in order. A stream's shard that breaks
        off is counted once as `shard_unreadable` and the unit ends there."""
        if not self.streamed:
            start = unit * self.shard_size
            for i in range(start, start + (self.size(unit) or 0)):
                yield f"record {i}", _indexed(self.source, i)
            return
        try:
            for offset, sample in self.source.shard_records(unit, "any"):
                yield f"{self.where(unit)} sample {offset}", _held(sample)
        except UnreadableShard as exc:
            skips.add(exc, self.where(unit))


def _indexed(source: Any, index: int) -> Read:
    return lambda: source.sample(index)


def _held(sample: Sample) -> Read:
    return lambda: sample


def mine(count: int, done: list[int], world: int, rank: int) -> list[int]:
    """The units rank `rank` of `world` embeds: every world-th of those not done."""
    finished = set(done)
    return [u for u in range(count) if u not in finished][rank::world]


def read_or_skip(read: Read, where: str, skips: Any) -> Sample | None:
    """`read()`, or None with the record counted in `skips` when it cannot be read."""
    try:
        return read()
    except SAMPLE_ERRORS as exc:
        skips.add(exc, where)
        return None
