"""Pretraining data sources: Hugging Face datasets, webdataset tar shards, folders, text files.

Every source yields `Item`s (image, text or pair, with an optional class label) through one of
the two interfaces of `flava.data.pretraining`: random access (`Source`: `__len__`, `item`) or
a stream of shards (`IterableSource`: `num_shards`, `records`, `decode`). Streamed sources also
offer random access to the first `preview_size` samples of their stream (validation batches and
the k-means fit need it). Images are decoded with PIL and left in their mode: the image
transforms convert every mode with `flava.data.transforms.to_rgb`.

Types (`SourceConfig.type`):

- ``huggingface``: `load_dataset(key, subset, split)` or `load_from_disk(path)`, with
  `rename_columns`, `remove_columns`, `split_key_mapping`, `text_columns`, `image_column`,
  `label_column`; `streaming: true` streams it. Gated sets use your token from `HF_TOKEN` or
  `hf auth login` (never passed through the config). Unreachable sets fail at once with one line.
- ``webdataset``: tar shards (see `TarShards` for the layout), read with `tarfile`.
- ``image_folder``: ``root/<class>/<image>``; the label is the index of the sorted class name.
- ``captions``: images under a folder and a JSONL or CSV captions file.
- ``text_files``: one document per line (.txt) or JSONL with a text field.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import subprocess
import tarfile
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flava.config import ConfigError
from flava.data.pretraining import BadSample, Item

log = logging.getLogger(__name__)

SOURCE_TYPES = ("embedded", "huggingface", "webdataset", "image_folder", "captions", "text_files")
IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm"}
)
# Packaged Hugging Face builders: keys that name a file format, not a dataset on the Hub.
_PACKAGED = frozenset(
    {"parquet", "json", "csv", "text", "arrow", "imagefolder", "webdataset", "pandas", "sql"}
)
_CAPTION_FIELDS = ("caption", "captions", "text")
_USER_AGENT = "flava-pretraining/0.1 (image fetcher)"
_SHARD_HINT = (
    "point shards: at your copy (pmd.yaml reads $PMD_ROOT) or write shards with "
    "python -m flava.data.write_shards SRC OUT_DIR"
)


class SourceError(ConfigError):
    """A dataset that cannot be read; the message is one line naming it and how to provide it."""


@dataclass
class Sample:
    """One raw sample: an image (encoded bytes, PIL, or a URL / path string), texts, a label."""

    key: str
    image: bytes | Image.Image | str | None = None
    texts: list[str] = field(default_factory=list)
    label: int | None = None
    empty_text: bool = False
    """A text field is present but every value in it is empty or whitespace."""
    bad_label: Any = None
    """A label field whose value is not an integer class (kept to name it in the skip log)."""

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

    def item(self, kind: str, rng: np.random.Generator) -> Item:
        """The `Item` of `kind`: the decoded image and / or one of the texts drawn with `rng`."""
        problem = self.problem(kind)
        if problem == "bad_label":
            raise BadSample(problem, f"sample {self.key!r}: label {self.bad_label!r} is not an int")
        if problem == "empty_text":
            raise BadSample(problem, f"sample {self.key!r}: empty or whitespace-only text")
        if not self.has(kind):
            reason = "missing_image" if self.image is None else "empty_text"
            raise BadSample(reason, f"sample {self.key!r} has no {kind} data")
        text = None
        if kind in ("text", "vl"):
            many = len(self.texts) > 1
            text = self.texts[int(rng.integers(len(self.texts)))] if many else self.texts[0]
        image = decode_image(self.image) if kind in ("image", "vl") else None
        return Item(image=image, text=text, label=self.label)


def fetch(location: str, timeout: float = 10.0) -> bytes:
    """The bytes of an http(s) URL (one try, short timeout) or a local file; OSError if not."""
    if location.startswith(("http://", "https://")):
        request = urllib.request.Request(location, headers={"User-Agent": _USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    return Path(location).expanduser().read_bytes()


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
        try:
            data = fetch(data)
        except (OSError, ValueError) as exc:
            raise BadSample("image_unavailable", f"cannot fetch {data}: {exc}") from None
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


def _texts(value: Any) -> list[str]:
    """Non-empty strings from a text field: a string, or a list of strings."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def _label(value: Any) -> int | None:
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


def _set_label(sample: Sample, value: Any) -> None:
    """Set `sample.label` from a label field, flagging a value that is not an integer class."""
    sample.label = _label(value)
    if (
        sample.label is None
        and value is not None
        and not (isinstance(value, str) and not value.strip())
    ):
        sample.bad_label = value if not isinstance(value, bytes) else value[:40]


def _has_text_field(value: Any) -> bool:
    """Whether a text field holds something (a string or a list), even if only whitespace."""
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and len(value) > 0)


class IndexedSource:
    """Random-access base: subclasses give `__len__` and `sample(index)`."""

    kinds: frozenset[str] = frozenset({"image", "text", "vl"})

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, index: int) -> Sample:
        """The raw sample at `index` (all its texts, encoded image, label)."""
        raise NotImplementedError

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Item:
        """Sample `index` as an `Item` of `kind`."""
        return self.sample(index).item(kind, rng)

    def describe(self) -> str:
        """A short description (logs, error messages, shard manifests)."""
        return type(self).__name__


class StreamingSource:
    """Base of streamed sources: shards of `Sample`s, plus random access to a preview prefix."""

    kinds: frozenset[str] = frozenset({"image", "text", "vl"})

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

    def records(self, shards: Sequence[int], kind: str) -> Iterator[Sample]:
        """Samples of `kind` ("any": every non-empty one) of the given shards, in order."""
        for shard in shards:
            for sample in self.shard_samples(shard):
                usable = sample.image is not None or bool(sample.texts)
                if kind == "any":
                    if usable:
                        yield sample
                elif sample.has(kind) or sample.problem(kind):
                    yield sample  # a bad one is skipped and counted when decoded

    def decode(self, record: Sample, kind: str, rng: np.random.Generator) -> Item:
        """One record as an `Item` of `kind`."""
        return record.item(kind, rng)

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

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Item:
        """Preview sample `index` as an `Item` of `kind`."""
        return self.preview()[index].item(kind, rng)

    def sample(self, index: int) -> Sample:
        """Preview sample `index`."""
        return self.preview()[index]

    def describe(self) -> str:
        """A short description (logs, error messages)."""
        return type(self).__name__

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_preview"] = None  # workers do not need the preview; keep pickles small
        return state


# --------------------------------------------------------------------------------------------
# webdataset tar shards


def expand_braces(pattern: str) -> list[str]:
    """Expand `{000..009}` ranges (zero padding kept) and `{a,b}` lists, left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end() :], match.group(1)
    ranged = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if ranged:
        lo, hi = ranged.group(1), ranged.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        options = ["{" + body + "}"]
        return [head + options[0] + t for t in expand_braces(tail)]
    return [head + o + t for o in options for t in expand_braces(tail)]


def _is_url(text: str) -> bool:
    return text.startswith("pipe:") or bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text))


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Shard paths / URLs from patterns: braces, globs, folders of *.tar; missing -> SourceError."""
    out: list[str] = []
    for pattern in patterns:
        for item in expand_braces(str(pattern)):
            if _is_url(item):
                out.append(item[len("file://") :] if item.startswith("file://") else item)
                continue
            path = Path(item).expanduser()
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.name.endswith((".tar", ".tar.gz")))
                if not found:
                    raise SourceError(f"no *.tar shards in {path}; {_SHARD_HINT}")
                out += [str(p) for p in found]
            elif any(c in item for c in "*?["):
                found = sorted(path.parent.glob(path.name))
                if not found:
                    raise SourceError(f"no shards match {item}; {_SHARD_HINT}")
                out += [str(p) for p in found]
            elif path.is_file():
                out.append(str(path))
            else:
                raise SourceError(f"shard {path} not found; {_SHARD_HINT}")
    return out


@contextlib.contextmanager
def open_shard(url: str, timeout: float = 5.0) -> Iterator[IO[bytes]]:
    """A binary stream of a local path, http(s) URL, `pipe:COMMAND` or fsspec URL."""
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            yield proc.stdout
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            proc.wait()
    elif url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=timeout) as response:
            yield response
    elif _is_url(url):
        import fsspec

        with fsspec.open(url, "rb") as f:
            yield f
    else:
        with open(url, "rb") as f:
            yield f


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset (key, extension): `dir/000042.seg.jpg` -> (`dir/000042`, `seg.jpg`)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def sample_from_files(key: str, files: dict[str, bytes], text_fields: Sequence[str]) -> Sample:
    """A `Sample` from the files of one webdataset sample (extension -> bytes)."""
    sample = Sample(key=key)
    for ext, data in files.items():
        last = ext.rsplit(".", 1)[-1]
        if sample.image is None and last in IMAGE_EXTENSIONS:
            sample.image = data
    if "txt" in files:
        sample.texts = _texts(files["txt"].decode("utf-8", errors="replace"))
        sample.empty_text = not sample.texts
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            if not sample.texts:
                for name in (*text_fields, *_CAPTION_FIELDS):
                    if name in meta and _texts(meta[name]):
                        sample.texts = _texts(meta[name])
                        break
                    sample.empty_text |= name in meta and _has_text_field(meta[name])
            if "label" in meta:
                _set_label(sample, meta["label"])
    for ext in ("cls", "cls2", "label"):
        if ext in files:
            _set_label(sample, files[ext].decode("utf-8", errors="replace"))
            break
    return sample


def read_tar_samples(stream: IO[bytes], text_fields: Sequence[str] = ("text",)) -> Iterator[Sample]:
    """Samples of a webdataset tar stream: consecutive members sharing a key form one sample."""
    key: str | None = None
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name_key, ext = split_member_name(member.name)
            if not ext or name_key.rpartition("/")[2].startswith((".", "_")):
                continue  # no extension, hidden files, __key__-style metadata
            if name_key != key:
                if key is not None and files:
                    yield sample_from_files(key, files, text_fields)
                key, files = name_key, {}
            f = tar.extractfile(member)
            if f is not None:
                files[ext] = f.read()
    if key is not None and files:
        yield sample_from_files(key, files, text_fields)


class TarShards(StreamingSource):
    """webdataset tar shards: images with captions / labels, or texts.

    Layout: each shard is a plain (or gzipped) tar; a sample is a run of consecutive members
    with the same key, the member name up to the first dot of its file name
    (``000000042.jpg``, ``000000042.txt``, ``000000042.json``, ``000000042.cls``):

    - image: ``jpg`` / ``jpeg`` / ``png`` / ``webp`` (any format and mode PIL reads);
    - caption: ``txt`` (UTF-8), or ``json`` with ``caption`` (str) or ``captions`` (list: one
      drawn per use) or ``text``;
    - label: ``cls`` (an integer as text) or ``label`` in the ``json``;
    - a text corpus shard holds ``txt`` members only.

    Shards are files, folders of ``*.tar``, brace patterns ``shards-{000000..000009}.tar``,
    globs, ``http(s)://`` URLs, ``pipe:COMMAND`` (e.g. ``pipe:aws s3 cp s3://b/x.tar -``) or
    other fsspec URLs. `flava.data.write_shards` writes this layout with a ``manifest.json``.
    A shard that cannot be read is skipped with a warning.
    """

    def __init__(
        self,
        urls: Sequence[str],
        text_fields: Sequence[str] = ("text",),
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        preview_size: int = 1024,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(shuffle_buffer, resampled, preview_size)
        if not urls:
            raise SourceError("webdataset source without shards: set shards: [paths or URLs]")
        self.urls = list(urls)
        self.text_fields = tuple(text_fields)
        self.timeout = timeout

    def num_shards(self) -> int:
        """Number of tar shards."""
        return len(self.urls)

    def shard_samples(self, shard: int) -> Iterator[Sample]:
        """Samples of tar `shard` in order (a broken shard logs a warning and ends early)."""
        url = self.urls[shard]
        try:
            with open_shard(url, self.timeout) as stream:
                yield from read_tar_samples(stream, self.text_fields)
        except (tarfile.TarError, OSError, EOFError) as exc:
            log.warning("skipping the rest of shard %s: %s", url, exc)

    def describe(self) -> str:
        """Shard count and the first shard."""
        return f"webdataset ({len(self.urls)} shards: {self.urls[0]}, ...)"


# --------------------------------------------------------------------------------------------
# local folders and text files


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and p.is_file()
    )


class ImageFolder(IndexedSource):
    """Images in class sub-folders (``root/<class>/<image>``); label = sorted class index."""

    kinds = frozenset({"image"})

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"image folder {self.root} not found")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise SourceError(f"image folder {self.root} has no class sub-folders")
        self.files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            found = _image_files(self.root / name)
            self.files += [str(p.relative_to(self.root)) for p in found]
            labels += [label] * len(found)
        if not self.files:
            raise SourceError(f"image folder {self.root} has no images in its class folders")
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, index: int) -> Sample:
        """Image `index` (encoded bytes) with its class label."""
        rel = self.files[index]
        data = (self.root / rel).read_bytes()
        return Sample(key=rel, image=data, label=int(self.labels[index]))

    def describe(self) -> str:
        """Folder, image and class counts."""
        return f"image_folder {self.root} ({len(self.files)} images, {len(self.classes)} classes)"


def read_captions(
    path: Path, image_field: str = "image", text_fields: Sequence[str] = ("text",)
) -> dict[str, list[str]]:
    """image relpath -> captions, from JSONL (caption / captions / text) or CSV (image,caption)."""
    fields = [*dict.fromkeys([*_CAPTION_FIELDS, *text_fields])]
    out: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            rows: Iterator[dict[str, Any]] = csv.DictReader(f)
        else:
            rows = (json.loads(line) for line in f if line.strip())
        try:
            for row in rows:
                image = row.get(image_field)
                if not image:
                    raise SourceError(f"{path}: a row has no {image_field!r} field")
                texts = [t for name in fields if row.get(name) for t in _texts(row[name])]
                out.setdefault(str(image), []).extend(texts)
        except ValueError as exc:
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"{path}: not valid JSONL ({exc})") from None
    return out


class CaptionedImages(IndexedSource):
    """Images under a folder with a captions file (JSONL or CSV; several captions per image)."""

    def __init__(
        self,
        root: str | os.PathLike,
        captions_file: str | None = None,
        image_field: str = "image",
        text_fields: Sequence[str] = ("text",),
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"captions folder {self.root} not found")
        if captions_file:
            path = Path(captions_file).expanduser()
            path = path if path.is_absolute() else self.root / path
        else:
            candidates = [self.root / n for n in ("captions.jsonl", "captions.csv")]
            path = next((p for p in candidates if p.is_file()), candidates[0])
        if not path.is_file():
            raise SourceError(f"captions file {path} not found (JSONL or CSV: image,caption)")
        self.captions_path = path
        captions = read_captions(path, image_field, text_fields)
        self.images = list(captions)
        self.captions = [captions[k] for k in self.images]
        if not self.images:
            raise SourceError(f"captions file {path} lists no images")
        first = self.root / self.images[0]
        if not first.is_file():
            raise SourceError(f"image {first} (first in {path}) not found")

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> Sample:
        """Image `index` (encoded bytes) with all its captions."""
        rel = self.images[index]
        data = (self.root / rel).read_bytes()
        return Sample(key=rel, image=data, texts=list(self.captions[index]))

    def describe(self) -> str:
        """Folder, captions file and image count."""
        return f"captions {self.captions_path} ({len(self.images)} images)"


class TextFiles(IndexedSource):
    """Text documents: one per non-empty line of .txt files, or JSONL lines with a text field."""

    kinds = frozenset({"text"})

    def __init__(self, path: str | os.PathLike, text_fields: Sequence[str] = ("text",)) -> None:
        self.path = str(path)
        self.text_fields = [*dict.fromkeys([*text_fields, "text"])]
        self.files = _text_files(self.path)
        offsets, counts = [], []
        for name in self.files:
            lines = _line_offsets(name, self.text_fields if _is_jsonl(name) else None)
            offsets.append(lines)
            counts.append(len(lines))
        self.offsets = offsets
        self.ends = np.cumsum(counts)
        if not len(self.ends) or self.ends[-1] == 0:
            raise SourceError(f"text files {self.path}: no non-empty lines")
        self._handles: dict[int, IO[bytes]] = {}

    def __len__(self) -> int:
        return int(self.ends[-1])

    def sample(self, index: int) -> Sample:
        """Document `index` (JSONL lines without a text field give an empty sample)."""
        f = int(np.searchsorted(self.ends, index, side="right"))
        line = index - (int(self.ends[f - 1]) if f else 0)
        handle = self._handles.get(f)
        if handle is None:
            handle = self._handles[f] = open(self.files[f], "rb")  # noqa: SIM115
        handle.seek(int(self.offsets[f][line]))
        text = handle.readline().decode("utf-8", errors="replace").strip()
        texts = _jsonl_texts(text, self.text_fields) if _is_jsonl(self.files[f]) else [text]
        return Sample(key=f"{Path(self.files[f]).name}:{line}", texts=texts)

    def describe(self) -> str:
        """Files and document count."""
        return f"text_files {self.path} ({len(self.files)} files, {len(self)} documents)"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def _text_files(path: str) -> list[str]:
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(
            str(f) for f in p.rglob("*") if f.suffix in (".txt", ".jsonl") and f.is_file()
        )
    elif any(c in path for c in "*?["):
        found = sorted(str(f) for f in p.parent.glob(p.name) if f.is_file())
    elif p.is_file():
        found = [str(p)]
    else:
        raise SourceError(f"text files {p} not found")
    if not found:
        raise SourceError(f"no .txt or .jsonl files at {p}")
    return found


def _is_jsonl(name: str) -> bool:
    return name.endswith(".jsonl")


def _jsonl_texts(line: str | bytes, fields: Sequence[str]) -> list[str]:
    """The texts of the first non-empty text field of a JSONL line ([] if none)."""
    try:
        row = json.loads(line)
    except ValueError:
        return []
    if not isinstance(row, dict):
        return []
    return next((_texts(row[k]) for k in fields if _texts(row.get(k))), [])


def _line_offsets(name: str, jsonl_fields: Sequence[str] | None = None) -> np.ndarray:
    """Byte offsets of the documents of a file: non-empty lines (JSONL: with a text field)."""
    offsets = []
    position = 0
    with open(name, "rb") as f:
        for line in f:
            if line.strip() and (jsonl_fields is None or _jsonl_texts(line, jsonl_fields)):
                offsets.append(position)
            position += len(line)
    return np.asarray(offsets, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets


_HUB_ANSWERED: set[tuple[str, bool]] = set()  # datasets the Hub confirmed in this process


def _offline() -> bool:
    from huggingface_hub import constants

    try:
        import datasets.config as dconfig

        offline = bool(dconfig.HF_HUB_OFFLINE)
    except ImportError:
        offline = False
    return offline or bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _forced_offline() -> Iterator[None]:
    """Read the local cache only (the Hub did not answer)."""
    import datasets.config as dconfig
    from huggingface_hub import constants

    saved = (dconfig.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    dconfig.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _hf_cached(key: str, cache_dir: str | None) -> bool:
    """Whether a copy of dataset `key` seems to be in the datasets or hub cache."""
    import datasets.config as dconfig
    from datasets.naming import camelcase_to_snakecase
    from huggingface_hub import constants

    parts = key.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    roots = [Path(cache_dir or dconfig.HF_DATASETS_CACHE) / "___".join(parts)]
    roots.append(Path(constants.HF_HUB_CACHE) / ("datasets--" + key.replace("/", "--")))
    return any(r.is_dir() for r in roots)


def _hf_name(cfg: Any) -> str:
    return f"{cfg.key}/{cfg.subset}" if cfg.subset else str(cfg.key)


def _hf_hint(cfg: Any) -> str:
    token = ""
    if cfg.gated:
        token = "it is gated: accept its terms on huggingface.co and log in (hf auth login or "
        token += "HF_TOKEN); "
    return (
        f"{token}run once online to fill the cache (HF_DATASETS_CACHE), or give path: to a copy "
        "saved with save_to_disk, or use webdataset shards (python -m flava.data.write_shards)"
    )


def _hf_local_key(key: str) -> bool:
    return key in _PACKAGED or Path(key).expanduser().exists()


def check_huggingface(cfg: Any) -> bool:
    """Fail fast (SourceError) if the dataset cannot be had; True if only the cache can serve it.

    Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) it looks for a cached copy; online it asks
    the Hub once with a short timeout (no retries): missing, gated without a token, unreachable
    and not cached all fail with one line.
    """
    if cfg.path:
        if not Path(cfg.path).expanduser().exists():
            raise SourceError(
                f"Hugging Face dataset {cfg.path} (saved with save_to_disk) not found"
            )
        return False
    if not cfg.key:
        raise SourceError("huggingface source needs key: (Hub dataset) or path: (save_to_disk)")
    if _hf_local_key(cfg.key):
        return False
    name = _hf_name(cfg)
    if _offline():
        if _hf_cached(cfg.key, cfg.cache_dir):
            return True
        raise SourceError(
            f"Hugging Face dataset {name} is not in the local cache and the Hub is offline "
            f"(HF_HUB_OFFLINE); {_hf_hint(cfg)}"
        )
    if (cfg.key, bool(cfg.gated)) in _HUB_ANSWERED:
        return False
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi().dataset_info(cfg.key, timeout=cfg.timeout)
    except GatedRepoError:
        raise SourceError(f"Hugging Face dataset {name}: access denied; {_hf_hint(cfg)}") from None
    except RepositoryNotFoundError:
        raise SourceError(
            f"Hugging Face dataset {cfg.key} not found on the Hub (private or gated: log in with "
            "hf auth login or HF_TOKEN)"
        ) from None
    except Exception as exc:  # connection refused, DNS, timeout, offline mode
        if _hf_cached(cfg.key, cfg.cache_dir):
            log.warning("the Hub is unreachable; using the cached copy of %s", name)
            return True
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"Hugging Face dataset {name} cannot be reached ({reason}) and is not cached; "
            f"{_hf_hint(cfg)}"
        ) from None
    if getattr(info, "gated", False) and get_token() is None:
        raise SourceError(
            f"Hugging Face dataset {name} is gated and no token is set; {_hf_hint(cfg)}"
        )
    _HUB_ANSWERED.add((cfg.key, bool(cfg.gated)))
    return False


def _split(cfg: Any, role: str) -> str:
    split = cfg.split or ("train" if role == "train" else "validation")
    return str(dict(cfg.split_key_mapping).get(split, split))


def load_huggingface(cfg: Any, role: str) -> Any:
    """The configured split as a `datasets.Dataset` or `IterableDataset` (streaming)."""
    import datasets

    split = _split(cfg, role)
    name = _hf_name(cfg) if cfg.key else str(cfg.path)
    cached_only = check_huggingface(cfg)
    try:
        if cfg.path:
            ds = datasets.load_from_disk(str(Path(cfg.path).expanduser()))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise SourceError(
                        f"{cfg.path} has no split {split!r} (splits: {', '.join(ds)}); "
                        "set split: or split_key_mapping:"
                    )
                ds = ds[split]
            if cfg.streaming:
                ds = ds.to_iterable_dataset(num_shards=max(1, min(cfg.stream_shards, len(ds))))
        else:
            kwargs: dict[str, Any] = {"split": split, "streaming": cfg.streaming}
            if cfg.cache_dir:
                kwargs["cache_dir"] = cfg.cache_dir
            if cfg.data_files:
                kwargs["data_files"] = list(cfg.data_files)
            with _forced_offline() if cached_only else contextlib.nullcontext():
                ds = datasets.load_dataset(cfg.key, cfg.subset, **kwargs)
    except SourceError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise SourceError(
            f"Hugging Face dataset {name} ({split}) cannot be loaded: {type(exc).__name__}: "
            f"{reason}; {_hf_hint(cfg)}"
        ) from None
    return _prepare_columns(ds, cfg)


def _prepare_columns(ds: Any, cfg: Any) -> Any:
    """Rename, drop unused columns, keep images encoded (decoded by us, lazily)."""
    import datasets

    for old, new in cfg.rename_columns:
        if ds.column_names is not None and old in ds.column_names:
            ds = ds.rename_column(old, new)
    columns = ds.column_names
    if columns is not None:
        drop = [c for c in cfg.remove_columns if c in columns]
        if drop:
            ds = ds.remove_columns(drop)
        keep = [c for c in (cfg.image_column, *cfg.text_columns, cfg.label_column) if c in columns]
        keep = [c for c in dict.fromkeys(keep) if c not in drop]
        if not keep:
            raise SourceError(
                f"Hugging Face dataset {_hf_name(cfg) if cfg.key else cfg.path}: none of the "
                f"columns image_column={cfg.image_column!r}, text_columns="
                f"{list(cfg.text_columns)} exist (columns: {', '.join(columns)})"
            )
        ds = ds.select_columns(keep)
    features = ds.features
    if features is not None and isinstance(features.get(cfg.image_column), datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
    return ds


def _row_sample(row: dict[str, Any], key: str, cfg: Any) -> Sample:
    image = row.get(cfg.image_column)
    if isinstance(image, dict):
        data = image.get("bytes")
        if data is None and image.get("path"):
            data = Path(image["path"]).read_bytes()
        image = data
    elif isinstance(image, str):
        image = image.strip() or None  # a URL or path column (e.g. red_caps' image_url)
    elif image is not None and not isinstance(image, (bytes, Image.Image)):
        image = None
    texts = [t for c in cfg.text_columns for t in _texts(row.get(c))]
    empty = not texts and any(_has_text_field(row.get(c)) for c in cfg.text_columns)
    sample = Sample(key=key, image=image, texts=texts, empty_text=empty)
    _set_label(sample, row.get(cfg.label_column))
    return sample


def _kinds(columns: Sequence[str] | None, cfg: Any) -> frozenset[str]:
    if columns is None:
        return frozenset({"image", "text", "vl"})
    has_image = cfg.image_column in columns
    has_text = any(c in columns for c in cfg.text_columns)
    kinds = {"image"} if has_image else set()
    kinds |= {"text"} if has_text else set()
    kinds |= {"vl"} if has_image and has_text else set()
    return frozenset(kinds)


class HuggingFaceSource(IndexedSource):
    """A Hugging Face `datasets.Dataset` read by index (rows with empty texts are dropped)."""

    def __init__(self, dataset: Any, cfg: Any, name: str) -> None:
        text_columns = [c for c in cfg.text_columns if c in dataset.column_names]
        if text_columns and cfg.image_column not in dataset.column_names:

            def non_empty(*columns: list[Any]) -> list[bool]:
                return [any(_texts(v) for v in values) for values in zip(*columns, strict=True)]

            dataset = dataset.filter(non_empty, input_columns=text_columns, batched=True)
        self.dataset = dataset
        self.cfg = cfg
        self.name = name
        self.kinds = _kinds(dataset.column_names, cfg)

    @classmethod
    def from_config(cls, cfg: Any, role: str) -> IndexedSource | StreamingSource:
        """The configured dataset: random access, or `HuggingFaceStream` when streaming."""
        ds = load_huggingface(cfg, role)
        name = f"huggingface {_hf_name(cfg) if cfg.key else cfg.path} ({_split(cfg, role)})"
        if cfg.streaming:
            return HuggingFaceStream(ds, cfg, name)
        return cls(ds, cfg, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int) -> Sample:
        """Row `index` as a raw sample."""
        return _row_sample(self.dataset[int(index)], str(index), self.cfg)

    def describe(self) -> str:
        """Dataset name, split and size."""
        return f"{self.name}, {len(self)} rows"


class HuggingFaceStream(StreamingSource):
    """A streamed Hugging Face `IterableDataset`; its data files are the shards."""

    def __init__(self, dataset: Any, cfg: Any, name: str) -> None:
        super().__init__(cfg.shuffle_buffer, cfg.resampled, cfg.preview_size)
        self.dataset = dataset
        self.cfg = cfg
        self.name = name
        self.kinds = _kinds(dataset.column_names, cfg)

    def num_shards(self) -> int:
        """Number of shards (data files) of the stream."""
        shards = getattr(self.dataset, "num_shards", None) or self.dataset.n_shards
        return int(shards)

    def shard_samples(self, shard: int) -> Iterator[Sample]:
        """Rows of one shard."""
        part = self.dataset.shard(num_shards=self.num_shards(), index=shard, contiguous=True)
        for i, row in enumerate(part):
            yield _row_sample(row, f"{shard}:{i}", self.cfg)

    def describe(self) -> str:
        """Dataset name and shard count."""
        return f"{self.name}, streamed in {self.num_shards()} shards"


# --------------------------------------------------------------------------------------------
# construction from SourceConfig


def build(cfg: Any, role: str) -> IndexedSource | StreamingSource:
    """A non-embedded source from its `SourceConfig` for the "train" or "val" role."""
    kind = cfg.type
    if kind == "huggingface":
        return HuggingFaceSource.from_config(cfg, role)
    if kind == "webdataset":
        patterns = list(cfg.shards) or ([cfg.path] if cfg.path else [])
        return TarShards(
            expand_shards(patterns),
            text_fields=list(cfg.text_columns),
            shuffle_buffer=cfg.shuffle_buffer,
            resampled=cfg.resampled,
            preview_size=cfg.preview_size,
            timeout=cfg.timeout,
        )
    if kind == "image_folder":
        return ImageFolder(_need_path(cfg))
    if kind == "captions":
        return CaptionedImages(
            _need_path(cfg), cfg.captions_file, cfg.image_column, list(cfg.text_columns)
        )
    if kind == "text_files":
        return TextFiles(_need_path(cfg), list(cfg.text_columns))
    raise SourceError(unknown_type(kind))


def unknown_type(kind: str) -> str:
    """The one-line message for an unknown source type."""
    return f"source type {kind!r} is not known; use one of: {', '.join(SOURCE_TYPES)}"


def _need_path(cfg: Any) -> str:
    if not cfg.path:
        raise SourceError(f"{cfg.type} source needs path: (a local folder or file)")
    return str(cfg.path)


def check(cfg: Any) -> None:
    """Cheap reachability checks (no data read): paths, shard lists, the Hub. SourceError."""
    kind = cfg.type
    if kind == "embedded":
        return
    if kind == "huggingface":
        check_huggingface(cfg)
    elif kind == "webdataset":
        patterns = list(cfg.shards) or ([cfg.path] if cfg.path else [])
        if not patterns:
            raise SourceError("webdataset source without shards: set shards: [paths or URLs]")
        expand_shards(patterns)
    elif kind in ("image_folder", "captions", "text_files"):
        path = Path(_need_path(cfg)).expanduser()
        if not path.exists() and not any(c in str(path) for c in "*?["):
            raise SourceError(f"{kind} path {path} not found")
    else:
        raise SourceError(unknown_type(kind))
