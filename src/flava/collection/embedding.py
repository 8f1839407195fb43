"""Embedding a collection: any source's records -> shards of `flava.collection.layout`.

`embed_collection(config)` (the run of `python -m flava.embed`) reads the source once, cut into
units (`flava.collection.units`). Under torchrun every process embeds its own units; rank 0
checks the output folder first (a folder holding embeddings made with other settings, or of a
source that changed, is refused in one line) and tells every process which units are written
already, so a killed run resumes at any process count and every record is embedded once.

Per unit, records are read in order; threads (`embed.num_workers`) decode and transform the
images of the next batch while the encoder embeds this one; the unit's captions are embedded at
its end, longest first (`Encoder.texts`). A record that cannot be used (unreadable, truncated,
SVG or missing image, no caption where one is embedded, a shard that breaks off) is skipped and
counted per reason (`flava.data.sources.SkipLog`); above data.max_skipped_fraction of the
records read the command stops with one line (exit 1) after writing the manifest.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flava.collection import layout
from flava.collection.encoder import Encoder
from flava.collection.progress import Progress
from flava.collection.units import Read, Units, mine, read_or_skip
from flava.config import ConfigError
from flava.data.sources import SAMPLE_ERRORS, BadSample, SkipLog, decode_image
from flava.data.sources.sample import Sample
from flava.objectives.kinds import Kind

log = logging.getLogger("flava")

MODALITY_FIELDS = {"image": ("image",), "text": ("text",), "pair": ("image", "text")}
"""The arrays each modality writes."""


def held_kinds(source: Any) -> frozenset[str]:
    """What a source holds: its `kinds`; a stream (whose type allows any) by its first record."""
    from flava.data.sources import StreamingSource, UnreadableShard

    kinds = frozenset(str(k) for k in source.kinds)
    if Kind.vl in kinds:
        kinds |= {Kind.image, Kind.text}
    if not isinstance(source, StreamingSource) or source.num_shards() == 0:
        return kinds
    try:
        first = next(iter(source.shard_records(0, "any")))[1]
    except (StopIteration, UnreadableShard, *SAMPLE_ERRORS):
        return kinds
    seen = {k for k, ok in (("image", first.image is not None), ("text", first.texts)) if ok}
    return kinds & frozenset(seen) or kinds


def modality_of(setting: str, kinds: frozenset[str]) -> str:
    """The modality embedded: `auto` -> pair when the source holds images and texts, else the
    one it holds; a modality the source cannot give fails in one line."""
    has_image, has_text = "image" in kinds, "text" in kinds
    if setting == "auto":
        return "pair" if has_image and has_text else "image" if has_image else "text"
    needs = MODALITY_FIELDS[setting]
    if ("image" in needs and not has_image) or ("text" in needs and not has_text):
        holds = "images and texts" if has_image and has_text else "images" if has_image else "texts"
        raise ConfigError(
            f"embed.modality={setting}: the source holds only {holds}; use embed.modality=auto"
        )
    return setting


def _prepare(sample: Sample, fields: tuple[str, ...], encoder: Encoder) -> torch.Tensor | None:
    """The record's pixels [3, S, S] (None when no image is embedded); BadSample when the
    record lacks what is embedded or its image cannot be used."""
    if "text" in fields and not sample.texts:
        raise BadSample("empty_text", f"record {sample.key!r} has no caption")
    if "image" not in fields:
        return None
    if sample.image is None:
        raise BadSample("missing_image", f"record {sample.key!r} has no image")
    return encoder.pixels(decode_image(sample.image))


def _row_of(sample: Sample, where: str) -> tuple[str | None, dict[str, Any]]:
    """(the image's path or URL, the record's metadata) for the table; a streamed record's
    metadata names its input shard (`shard`) and, from an uncompressed tar, where its image's
    bytes lie there (`image_range`: [offset, size])."""
    path = sample.image if isinstance(sample.image, str) else sample.origin
    meta = dict(sample.meta)
    if sample.raw_label is not None:
        meta["label"] = sample.raw_label
    if sample.pair is not None:
        meta["pair"] = sample.pair
    if " sample " in where:  # a streamed record: the input shard it came from
        meta["shard"] = where.rsplit(" sample ", 1)[0]
        if sample.image_range is not None:  # and where its image lies in an uncompressed tar
            meta["image_range"] = list(sample.image_range)
    return path, meta


class UnitEmbedder:
    """Embeds units of one source with one encoder (see the module doc)."""

    def __init__(self, encoder: Encoder, modality: str, batch_size: int, workers: int) -> None:
        self.encoder, self.fields = encoder, MODALITY_FIELDS[modality]
        self.batch_size = batch_size
        self.pool: Executor | None = ThreadPoolExecutor(workers) if workers > 0 else None

    def close(self) -> None:
        """Stop the decoding threads."""
        if self.pool is not None:
            self.pool.shutdown()

    def _submit(self, batch: list[tuple[str, Sample]]) -> list[Future]:
        """Start preparing a batch of records (in the threads, or at once)."""
        futures = []
        for _, sample in batch:
            if self.pool is not None:
                futures.append(self.pool.submit(_prepare, sample, self.fields, self.encoder))
                continue
            done: Future = Future()
            try:
                done.set_result(_prepare(sample, self.fields, self.encoder))
            except SAMPLE_ERRORS as exc:
                done.set_exception(exc)
            futures.append(done)
        return futures

    def _batches(
        self, records: Iterator[tuple[str, Read]], skips: SkipLog, progress: Progress
    ) -> Iterator[list[tuple[str, Sample]]]:
        """The readable records in batches of batch_size (unreadable ones counted)."""
        batch: list[tuple[str, Sample]] = []
        for where, read in records:
            progress.update(1)
            sample = read_or_skip(read, where, skips)
            if sample is not None:
                batch.append((where, sample))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def embed(self, units: Units, unit: int, progress: Progress) -> layout.ShardRows:
        """The rows of `unit`: each usable record's table entry and embeddings."""
        skips, rows = SkipLog(), layout.ShardRows()
        before = progress.count
        images: list[torch.Tensor] = []
        pending: tuple[list, list[Future]] | None = None
        batches = self._batches(units.records(unit, skips), skips, progress)
        for batch in itertools.chain(batches, [None]):
            ahead = (batch, self._submit(batch)) if batch is not None else None
            if pending is not None:
                images += self._finish(*pending, rows, skips)
            pending = ahead
        found: dict[str, list[torch.Tensor]] = {"image": images, "text": []}
        if "text" in self.fields:  # every row kept has a caption then
            captions = [c[0] for c in rows.captions]
            found["text"].append(self.encoder.texts(captions, 4 * self.batch_size))
        dim = self.encoder.dim
        for name in self.fields:
            parts = found[name]
            rows.arrays[name] = _float16(torch.cat(parts) if parts else torch.empty(0, dim))
        rows.stats = {
            "unit": unit,
            "covers": units.where(unit),
            "records_read": progress.count - before,
            "skipped": dict(sorted(skips.counts.items())),
        }
        return rows

    def _finish(
        self,
        batch: list[tuple[str, Sample]],
        futures: list[Future],
        rows: layout.ShardRows,
        skips: SkipLog,
    ) -> list[torch.Tensor]:
        """Collect a prepared batch: kept records into `rows`, their image embeddings."""
        pixels = []
        for (where, sample), future in zip(batch, futures, strict=True):
            try:
                prepared = future.result()
            except SAMPLE_ERRORS as exc:
                skips.add(exc, where)
                continue
            path, meta = _row_of(sample, where)
            rows.keys.append(sample.key)
            rows.paths.append(path)
            rows.captions.append(list(sample.texts))
            rows.metadata.append(meta)
            if prepared is not None:
                pixels.append(prepared)
        if not pixels:
            return []
        return [self.encoder.images(torch.stack(pixels))]


def _float16(emb: torch.Tensor) -> np.ndarray:
    """Embeddings as float16; one line when a raw embedding does not fit float16."""
    out = emb.numpy().astype(np.float16)
    if not np.isfinite(out).all():
        raise ConfigError(
            "an embedding overflows float16 (|value| > 65504); set embed.normalize=true"
        )
    return out


def embed_units(
    embedder: UnitEmbedder, units: Units, todo: list[int], out: Path, progress: Progress
) -> None:
    """Embed and write each unit of `todo` in turn."""
    for unit in todo:
        rows = embedder.embed(units, unit, progress)
        layout.write_shard(out, unit, rows)
        progress.unit_done(units.size(unit) is None)


def run_units(
    encoder: Encoder,
    units: Units,
    done: list[int],
    out: Path,
    options: Any,
    modality: str,
) -> float:
    """This process's share of the units not `done` (`mine`); returns its seconds."""
    from flava.tasks.retrieval import process_count_and_rank

    world, rank = process_count_and_rank()
    todo = mine(units.count, done, world, rank)
    sizes = [units.size(u) for u in todo]
    total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
    start = time.perf_counter()
    embedder = UnitEmbedder(encoder, modality, options.batch_size, options.num_workers)
    with Progress(total, len(todo), options.progress and rank == 0) as progress:
        try:
            embed_units(embedder, units, todo, out, progress)
        finally:
            embedder.close()
    return time.perf_counter() - start
