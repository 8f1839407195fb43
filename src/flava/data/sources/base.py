"""The base of every data source: raw samples, image decoding, the bad-sample policy.

Every reader (`flava.data.sources.*`) yields `Sample`s: an image (encoded bytes, a PIL image or
a URL / path), its texts, an optional second text and a label. Random-access readers subclass
`IndexedSource` (`__len__`, `sample(index)`), streamed ones `StreamingSource` (shards of samples,
plus random access to a preview prefix). `Sample` is the one record type: a command decodes the
samples it reads (`Sample.decoded`: the image decoded, one text drawn; fine-tuning and evaluation
also set a `target`) and applies one policy to samples that cannot be used: `BadSample` names
the reason, `SkipLog` counts it, and `robust_item` replaces it by another sample of a
random-access source.

Images are decoded by `decode_image` only, and left in their mode: the image transforms convert
every mode with `flava.data.transforms.to_rgb`.
"""

from __future__ import annotations

import io
import logging
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flava.config import ConfigError

log = logging.getLogger("flava.data.sources")

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm"}
)
"""File extensions read as images, everywhere (folders, shards, records)."""
LISTED_NON_RASTER = frozenset({"svg", "svgz", "heic", "heif", "avif", "pdf"})
"""Extensions a folder scan lists although they cannot be decoded, so each is counted as a skipped
`unsupported_image_format` sample instead of vanishing without a word."""
CAPTION_FIELDS = ("caption", "captions", "text")
"""Fields read as captions when no other text field is configured."""
_USER_AGENT = "flava/0.1 (image fetcher)"
# Replacement draws for a random-access sample that cannot be read.
_MAX_REPLACEMENTS = 8

SKIP_REASONS = (
    "zero_byte_image",
    "truncated_image",
    "unsupported_image_format",
    "unreadable_image",
    "decompression_bomb",
    "image_unavailable",
    "missing_image",
    "empty_text",
    "bad_label",
    "shard_unreadable",
)
"""Why a sample was skipped (`BadSample.reason`); counted per reason and written to metrics."""


class BadSample(ValueError):
    """A sample that cannot be used; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return type(self), (self.reason, str(self))  # survives DataLoader workers


class UnreadableShard(OSError):
    """A shard that could not be read (after its retries); the reader skips the rest of it."""


class DataError(RuntimeError):
    """The data cannot feed the run (too many bad samples); the message is one line."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the cause
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def skip_reason(exc: BaseException) -> str:
    """The `SKIP_REASONS` entry for an exception raised while reading a sample."""
    if isinstance(exc, BadSample):
        return exc.reason
    if isinstance(exc, UnreadableShard):
        return "shard_unreadable"
    if isinstance(exc, Image.DecompressionBombError):
        return "decompression_bomb"
    if isinstance(exc, (FileNotFoundError, PermissionError, TimeoutError, urllib.error.URLError)):
        return "image_unavailable"
    return "unreadable_image"


class SkipLog:
    """Per-reason counts of skipped samples of one process / worker.

    Only the first skip of each reason is logged (with the sample it was); the rest are counted,
    and the counts travel with the batches to the step line, the summaries and metrics.json.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.seen: set[str] = set()

    def add(self, exc: BaseException, where: str) -> None:
        """Count one skipped sample; log it when it is the first of its reason."""
        reason = skip_reason(exc)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if reason not in self.seen:
            self.seen.add(reason)
            log.warning(
                "skipping %s [%s]: %s (further %s skips are counted, not logged)",
                where,
                reason,
                exc,
                reason,
            )

    def take(self) -> dict[str, int]:
        """The counts since the last call (they travel with a batch), then reset."""
        out, self.counts = self.counts, {}
        return out


class SourceError(ConfigError):
    """A dataset that cannot be read; the message is one line naming it and how to provide it."""


COMMON_FIELDS = ("type", "weight")
"""`SourceConfig` fields every type takes: the type, and the sampling weight among the datasets
of one kind (pretraining)."""


LABELLED_IMAGES = "labelled images"
"""What zero-shot classification and the linear probe read: images with a class each."""
CAPTIONED_IMAGES = "captioned images"
"""What retrieval reads: images with all their captions."""


@dataclass(frozen=True)
class SourceType:
    """A source type of `SourceConfig.type`: the fields it reads, how it is built and checked.

    Each backend module declares its types next to its reader; `factory` registers them all.
    """

    name: str
    fields: tuple[str, ...]
    """The `SourceConfig` fields the type reads besides `COMMON_FIELDS`; setting another one
    is refused (`factory.check_fields`)."""
    build: Callable[[Any, str, int], Any]
    """(config, role "train" / "val", image size) -> an `IndexedSource` or `StreamingSource`."""
    check: Callable[[Any], None]
    """Cheap reachability checks (no data read); raises `SourceError`."""
    holds: frozenset[str] = frozenset()
    """What the evaluation commands can read from it: `LABELLED_IMAGES` and / or
    `CAPTIONED_IMAGES` (a type holding neither, such as text_files, serves none of them)."""


def need_path(cfg: Any) -> str:
    """`cfg.path`, or a `SourceError` saying the type needs one."""
    if not cfg.path:
        raise SourceError(f"{cfg.type} source needs path: (a local folder or file)")
    return str(cfg.path)


def need_exists(path: Path, what: str) -> Path:
    """`path`, or a one-line `SourceError` "what: path not found"."""
    if not path.exists():
        raise SourceError(f"{what}: {path} not found")
    return path


def layout_file(
    root: str | Path | None, files: Any, key: str, default: str | None, what: str
) -> Path:
    """`root/files[key]` of a dataset layout (`default` when `files` does not name it, root
    "." when None), or a one-line `SourceError` "what: path not found"."""
    return need_exists(Path(root or ".") / files.get(key, default), what)


def layout_type(
    name: str, reader: Callable[[Any, dict[str, str]], Any], first: tuple[str, str | None, str]
) -> SourceType:
    """The type of a published layout under a dataset root (`path`) with its `files`, read by
    `reader(root, files)`; its check: the first file (key, default, what) exists."""

    def build(cfg: Any, role: str, image_size: int) -> Any:
        return reader(cfg.path, dict(cfg.files))

    def check(cfg: Any) -> None:
        if first[0] in cfg.files or first[1] is not None:
            layout_file(cfg.path, cfg.files, *first)

    return SourceType(name, ("path", "files"), build, check)


def check_path(cfg: Any) -> None:
    """A local source's path exists (a glob pattern is left to the reader)."""
    path = Path(need_path(cfg)).expanduser()
    if not path.exists() and not any(c in str(path) for c in "*?["):
        raise SourceError(f"{cfg.type} path {path} not found")


@dataclass
class Sample:
    """One sample: an image, texts, a label, and what a task makes of them.

    As read (raw), the image is encoded bytes, a PIL image or a URL / path string and `texts`
    holds every text of the sample. Decoded (`decoded`, a fine-tuning or evaluation dataset),
    the image is a PIL image (or None) and `texts` holds the one text drawn (or none).
    """

    key: str
    image: bytes | Image.Image | str | None = None
    texts: list[str] = field(default_factory=list)
    label: int | None = None
    pair: str | None = None
    """A second text (sentence pairs: premise / hypothesis, question / sentence)."""
    raw_label: Any = None
    """The label field as read (an int, a float for regression, a class name), for fine-tuning."""
    empty_text: bool = False
    """A text field is present but every value in it is empty or whitespace."""
    bad_label: Any = None
    """A label field whose value is not an integer class (kept to name it in the skip log)."""
    target: Any = None
    """What a fine-tuning or evaluation task predicts (`flava.tasks.task_data` sets it on decoded
    samples): a class index, a float (regression) or {answer index: soft score} (VQA)."""

    @property
    def text(self) -> str | None:
        """The first text (a decoded sample's one text), else None."""
        return self.texts[0] if self.texts else None

    @property
    def kind(self) -> str:
        """ "vl" (image and text), "image" or "text"."""
        if self.image is not None:
            return "vl" if self.text is not None else "image"
        return "text"

    def has(self, kind: str) -> bool:
        """Whether this sample can serve a batch of `kind`."""
        if kind == "image":
            return self.image is not None
        if kind == "text":
            return bool(self.texts)
        return self.image is not None and bool(self.texts)

    def problem(self, kind: str) -> str | None:
        """The skip reason of a sample meant for `kind` but unusable for it, else None."""
        if self.empty_text and not self.texts and kind in ("text", "vl"):
            if kind == "text" or self.image is not None:
                return "empty_text"
        if self.bad_label is not None and self.has(kind):
            return "bad_label"
        return None

    def require(self, kind: str) -> None:
        """Raise `BadSample` (missing_image / empty_text) unless the sample can serve `kind`."""
        if not self.has(kind):
            reason = "missing_image" if self.image is None and kind != "text" else "empty_text"
            raise BadSample(reason, f"sample {self.key!r} has no {kind} data")

    def decoded(self, kind: str, rng: np.random.Generator) -> Sample:
        """This sample decoded for `kind`: its image decoded and / or one of its texts drawn
        with `rng` (a modality `kind` does not read is left out)."""
        problem = self.problem(kind)
        if problem == "bad_label":
            raise BadSample(problem, f"sample {self.key!r}: label {self.bad_label!r} is not an int")
        if problem == "empty_text":
            raise BadSample(problem, f"sample {self.key!r}: empty or whitespace-only text")
        self.require(kind)
        text = None
        if kind in ("text", "vl"):
            many = len(self.texts) > 1
            text = self.texts[int(rng.integers(len(self.texts)))] if many else self.texts[0]
        image = decode_image(self.image) if kind in ("image", "vl") else None
        return replace(self, image=image, texts=[] if text is None else [text])


def fetch(location: str, timeout: float = 10.0) -> bytes:
    """The bytes of an http(s) URL (one try, short timeout) or a local file; OSError if not."""
    if location.startswith(("http://", "https://")):
        request = urllib.request.Request(location, headers={"User-Agent": _USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    return Path(location).expanduser().read_bytes()


def fetch_image(location: str) -> bytes:
    """The bytes of an image URL or path; `BadSample("image_unavailable")` if they cannot be had."""
    try:
        return fetch(location)
    except (OSError, ValueError) as exc:
        raise BadSample("image_unavailable", f"cannot fetch {location}: {exc}") from None


def _unsupported_format(data: bytes) -> str | None:
    """The name of a known non-raster or unsupported format from its first bytes, else None."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype svg")) or b"<svg" in head:
        return "SVG"
    if head.startswith(b"%pdf"):
        return "PDF"
    if data[4:8] == b"ftyp":
        return "HEIC/AVIF"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    return None


def decode_image(data: bytes | Image.Image | str | None) -> Image.Image:
    """A PIL image from encoded bytes or a URL / path (any format and mode PIL reads).

    Raises `BadSample` naming why an image cannot be used: zero bytes, truncated, an
    unsupported format (SVG, PDF, HEIC), unreadable, a decompression bomb (more pixels than
    `PIL.Image.MAX_IMAGE_PIXELS`), or unavailable (dead URL, missing file).
    """
    if isinstance(data, Image.Image):
        return data
    if data is None:
        raise BadSample("missing_image", "no image")
    if isinstance(data, str):
        data = fetch_image(data)
    if not data:
        raise BadSample("zero_byte_image", "the image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadSample("decompression_bomb", str(exc).split(" could be")[0]) from None
    except UnidentifiedImageError:
        fmt = _unsupported_format(data)
        if fmt:
            raise BadSample("unsupported_image_format", f"{fmt} is not a raster image") from None
        raise BadSample("unreadable_image", "not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = "truncated_image" if "truncated" in str(exc).lower() else "unreadable_image"
        raise BadSample(reason, f"cannot decode the image: {exc}") from None
    return ImageOps.exif_transpose(image) or image


def image_format(data: bytes) -> str | None:
    """ "jpg", "png" or "webp" from the magic bytes of an encoded image, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def texts_of(value: Any) -> list[str]:
    """Non-empty strings from a text field: a string, or a list of strings."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def label_index(value: Any) -> int | None:
    """An integer class label from an int, a bool (0 / 1), an integral float or a digit
    string; else None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer, bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def set_label(sample: Sample, value: Any) -> None:
    """Set `sample.label` from a label field, flagging a value that is not an integer class."""
    sample.raw_label = value
    sample.label = label_index(value)
    if (
        sample.label is None
        and value is not None
        and not (isinstance(value, str) and not value.strip())
    ):
        sample.bad_label = value if not isinstance(value, bytes) else value[:40]


def has_text_field(value: Any) -> bool:
    """Whether a text field holds something (a string or a list), even if only whitespace."""
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and len(value) > 0)


class IndexedSource:
    """Random-access base: subclasses give `__len__` and `sample(index)`."""

    kinds: frozenset[str] = frozenset({"image", "text", "vl"})
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

    def labels(self) -> list[Any]:
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

    kinds: frozenset[str] = frozenset({"image", "text", "vl"})
    class_names: list[str] | None = None

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

    def labels(self) -> list[Any]:
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


def too_many_skipped(counts: dict[str, int], read: int, limit: float, what: str) -> str | None:
    """The one-line reason to stop when more than `limit` of the `read` samples were skipped."""
    skipped = sum(counts.values())
    if read <= 0 or skipped <= limit * read:
        return None
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)
    return (
        f"{skipped} of {read} {what} ({skipped / read:.1%}) were skipped as bad ({reasons}), "
        f"more than max_skipped_fraction={limit}"
    )


def skip_metrics(counts: dict[str, int], read: int) -> dict[str, Any]:
    """`data/samples_read`, `data/skipped/<reason>` and `data/skipped_fraction` (metrics.json)."""
    out: dict[str, Any] = {"data/samples_read": read}
    out.update({f"data/skipped/{k}": v for k, v in sorted(counts.items())})
    out["data/skipped_fraction"] = sum(counts.values()) / max(1, read)
    return out


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder` (recursively, sorted), by extension; SVG, HEIC, AVIF and
    PDF files are listed too, to be counted as skipped when decoded."""
    listed = IMAGE_EXTENSIONS | LISTED_NON_RASTER
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in listed and p.is_file()
    )


def describe(source: Any) -> str:
    """A source's own description, else its type name."""
    text = getattr(source, "describe", None)
    return text() if callable(text) else type(source).__name__


SAMPLE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)
"""What reading one sample may raise for a sample that cannot be used (it is skipped)."""


def robust_read(
    read: Callable[[int], Any],
    count: int,
    index: int,
    rng: np.random.Generator,
    skips: SkipLog,
    name: str,
    noun: str = "samples",
) -> Any:
    """`read(index)`, replacing an unusable sample (bad file, dead URL, empty caption) by one
    drawn from range(count) with `rng`; each skipped sample is counted in `skips` by reason.
    `name` (the source) and `noun` (what it holds) go into the log and the stop message."""
    reasons: list[str] = []
    for _ in range(_MAX_REPLACEMENTS):
        try:
            return read(index)
        except SAMPLE_ERRORS as exc:
            skips.add(exc, f"sample {index} of {name}")
            reasons.append(skip_reason(exc))
            index = int(rng.integers(count))
    raise DataError(
        f"{name}: {_MAX_REPLACEMENTS} {noun} in a row could not be used "
        f"({', '.join(sorted(set(reasons)))}); check the data or drop this source"
    )


def robust_item(
    source: Any, index: int, kind: str, rng: np.random.Generator, skips: SkipLog | None = None
) -> Sample:
    """`source.item(index, kind, rng)` (a decoded `Sample`), bad samples replaced and counted
    (see `robust_read`)."""
    skips = skips if skips is not None else SkipLog()
    read = lambda i: source.item(i, kind, rng)  # noqa: E731
    name, noun = describe(source), f"{kind} samples"
    return robust_read(read, len(source), index, rng, skips, name, noun)
