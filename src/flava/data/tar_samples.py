"""Samples prepared as tar members for `flava.data.write_shards`: each image decoded once to
check it, JPEG / PNG kept or re-encoded, captions and labels as members; bad samples counted by
the shared bad-sample policy (`SkipLog`). `prepared` runs in forked worker processes that get
the source and options as arguments, in order, and logs in the parent the first example of each
skip reason that the workers hand over (each reason once per run, `skips.log_first`)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import multiprocessing
import pickle
import queue
from collections.abc import Generator
from typing import Any, NamedTuple

from PIL import Image

from flava.data.sources import (
    SAMPLE_ERRORS,
    DataError,
    Sample,
    SkipLog,
    decode_image,
    describe,
    fetch_image,
    image_format,
)
from flava.data.sources.skips import log_first
from flava.data.transforms import to_rgb

Files = list[tuple[str, bytes]]
"""The tar members of one sample: (name, bytes)."""


def encode_image(
    image: bytes | Image.Image | str, quality: int, reencode: bool, max_side: int | None
) -> tuple[str, bytes]:
    """(extension, bytes) of an image decoded once to check it (`BadSample` if it cannot be):
    JPEG / PNG bytes kept, anything else (or asked) JPEG of `quality`."""
    if isinstance(image, str):
        image = fetch_image(image)
    picture = decode_image(image)
    if isinstance(image, bytes) and not reencode and max_side is None:
        fmt = image_format(image)
        if fmt in ("jpg", "png"):
            return fmt, image
    picture = to_rgb(picture)
    if max_side is not None and max(picture.size) > max_side:
        picture = picture.copy()  # to_rgb may return the caller's own image
        picture.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return "jpg", out.getvalue()


def sample_files(
    sample: Sample,
    key: str,
    quality: int,
    reencode: bool,
    max_side: int | None,
    caption_lines: bool = False,
) -> list[tuple[str, bytes]]:
    """The tar members of one sample: image, txt (one caption) or json (several), cls;
    `caption_lines`: every caption on a line of the txt (a line break inside one: a space)."""
    files = []
    if sample.image is not None:
        ext, data = encode_image(sample.image, quality, reencode, max_side)
        files.append((f"{key}.{ext}", data))
    if caption_lines and sample.texts:
        text = "\n".join(" ".join(t.splitlines()) for t in sample.texts)
        files.append((f"{key}.txt", text.encode("utf-8")))
    elif len(sample.texts) == 1:
        files.append((f"{key}.txt", sample.texts[0].encode("utf-8")))
    elif sample.texts:
        files.append((f"{key}.json", json.dumps({"captions": sample.texts}).encode("utf-8")))
    if sample.label is not None:
        files.append((f"{key}.cls", str(sample.label).encode("utf-8")))
    return files


class Options(NamedTuple):
    """How samples are prepared: what each must hold and how its image is stored."""

    kind: str
    """What every sample must hold (`sample_kind`)."""
    quality: int
    reencode: bool
    max_side: int | None
    caption_lines: bool = False
    """All captions of a sample on the lines of one txt (CLIP_benchmark's retrieval sets)."""


class Prepared(NamedTuple):
    """One source sample, prepared: its tar members (None: skipped), its skip counts, and the
    first example of each reason met in a worker process (for the parent to log)."""

    sample_index: int
    files: Files | None
    skipped: dict[str, int]
    examples: dict[str, str]


def prepare_sample(source: Any, index: int, options: Options, skips: SkipLog) -> Prepared:
    """Sample `index` prepared; one that cannot be used is counted in `skips` by the shared
    bad-sample policy (`SkipLog`) and handed over with its counts and example."""
    sample = None
    try:
        sample = source.sample(index)
        sample.require(options.kind)
        key = f"{index:09d}"
        files = sample_files(sample, key, *options[1:])
        return Prepared(index, files, {}, {})
    except SAMPLE_ERRORS as exc:
        name = f"sample {index}" + (f" ({sample.key})" if sample is not None else "")
        skips.add(exc, f"{name} of {describe(source)}")
        return Prepared(index, None, skips.take(), skips.take_examples())


_CHUNK = 8
"""Samples a worker process prepares per task."""


def _serve(source: Any, options: Options, tasks: Any, results: Any) -> None:
    """A worker process: prepare each chunk of indices from `tasks` until None; put (its first
    index, its prepared samples) on `results`, or (its first index, the exception raised)."""
    skips = SkipLog()
    for chunk in iter(tasks.get, None):
        try:
            results.put((chunk.start, [prepare_sample(source, i, options, skips) for i in chunk]))
        except Exception as exc:  # handed to the parent, which raises it
            try:
                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            results.put((chunk.start, exc))


def _result(results: Any, workers: list[Any]) -> tuple[int, Any]:
    """The next (first index, result) from `results`; a worker that died fails in one line."""
    while True:
        try:
            return results.get(timeout=1)
        except queue.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise DataError(
                    f"a write_shards worker process died (exit code {dead[0]}); "
                    "run again with fewer processes"
                ) from None


def _in_workers(
    source: Any, options: Options, indices: range, processes: int
) -> Generator[Prepared]:
    """The prepared samples of `indices`, in order, from `processes` forked worker processes
    that inherit `source` (a few chunks ahead of the consumer)."""
    context = multiprocessing.get_context("fork")
    tasks, results = context.SimpleQueue(), context.Queue()
    workers = [
        context.Process(target=_serve, args=(source, options, tasks, results), daemon=True)
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    chunks = iter([indices[i : i + _CHUNK] for i in range(0, len(indices), _CHUNK)])
    done: dict[int, Any] = {}
    try:
        for chunk in itertools.islice(chunks, 4 * processes):
            tasks.put(chunk)
        for start in range(indices.start, indices.stop, _CHUNK):
            while start not in done:
                first, result = _result(results, workers)
                done[first] = result
            result = done.pop(start)
            if isinstance(result, BaseException):
                raise result
            tasks.put(next(chunks, None))  # None: one worker may stop
            yield from result
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()


def prepared(source: Any, options: Options, indices: range, processes: int) -> Generator[Prepared]:
    """The prepared samples of `indices`, in order (in `processes` worker processes where the
    platform forks); each skip reason met in a worker is logged here, once per run."""
    if processes <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        skips = SkipLog()
        yield from (prepare_sample(source, i, options, skips) for i in indices)
        return
    with contextlib.closing(_in_workers(source, options, indices, processes)) as stream:
        for prepared in stream:
            for reason, example in prepared.examples.items():
                log_first(reason, example)
            yield prepared
