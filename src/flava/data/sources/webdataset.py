"""webdataset tar shards: brace / glob / folder expansion, local, http(s), pipe: and fsspec URLs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from flava.config import SourceConfig
from flava.data.sources.errors import SourceError, UnreadableShard
from flava.data.sources.images import IMAGE_EXTENSIONS, LISTED_NON_RASTER
from flava.data.sources.readers import StreamingSource
from flava.data.sources.registry import CAPTIONED_IMAGES, LABELLED_IMAGES, SourceType
from flava.data.sources.sample import CAPTION_FIELDS, Sample, has_text_field, set_label, texts_of

log = logging.getLogger("flava.data.sources")

_SHARD_HINT = (
    "point shards: at your copy (pmd.yaml reads $PMD_ROOT) or write shards with "
    "python -m flava.data.write_shards SRC DST"
)


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


class _Whole(io.RawIOBase):
    """A response body that raises OSError when it ends before its Content-Length (http.client
    ends a cut connection's body quietly, and tar would take the cut for the archive's end)."""

    def __init__(self, stream: IO[bytes], length: str | None, url: str) -> None:
        super().__init__()
        self.stream, self.url, self.read_bytes = stream, url, 0
        self.length = int(length) if length and length.isdigit() else None

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.read_bytes += len(data)
        if not data and size and self.length is not None and self.read_bytes < self.length:
            raise OSError(f"connection closed after {self.read_bytes} of {self.length} bytes")
        return data


@contextlib.contextmanager
def open_shard(url: str, timeout: float = 5.0) -> Iterator[IO[bytes] | _Whole]:
    """A binary stream of a local path, http(s) URL, `pipe:COMMAND` or fsspec URL; a cut http
    body or a command that exits with an error status raises OSError."""
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            yield proc.stdout
        except BaseException:
            proc.kill()
            raise
        else:
            proc.stdout.read()  # the archive's padding: the command ends as it would alone
        finally:
            proc.stdout.close()
            status = proc.wait()
        if status > 0:
            raise OSError(f"{url[5:]!r} exited with status {status}")
    elif url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=timeout) as response:
            yield _Whole(response, response.headers.get("Content-Length"), url)
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


def sample_from_files(
    key: str,
    files: dict[str, bytes],
    text_fields: Sequence[str],
    pair_field: str | None = None,
    label_field: str = "label",
) -> Sample:
    """A `Sample` from the files of one webdataset sample (extension -> bytes); the `json`
    member may hold the captions, a second text (`pair_field`) and the label (`label_field`)."""
    sample = Sample(key=key)
    for ext, data in files.items():
        last = ext.rsplit(".", 1)[-1]
        if sample.image is None and last in IMAGE_EXTENSIONS:
            sample.image = data
    if sample.image is None:  # an SVG / PDF / HEIC member: decoding names it, and it is counted
        listed = [
            data for ext, data in files.items() if ext.rsplit(".", 1)[-1] in LISTED_NON_RASTER
        ]
        sample.image = listed[0] if listed else None
    if "txt" in files:
        sample.texts = texts_of(files["txt"].decode("utf-8", errors="replace"))
        sample.empty_text = not sample.texts
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            if not sample.texts:
                for name in (*text_fields, *CAPTION_FIELDS):
                    if name in meta and texts_of(meta[name]):
                        sample.texts = texts_of(meta[name])
                        break
                    sample.empty_text |= name in meta and has_text_field(meta[name])
            if pair_field and texts_of(meta.get(pair_field)):
                sample.pair = texts_of(meta[pair_field])[0]
            if label_field in meta:
                set_label(sample, meta[label_field])
    for ext in ("cls", "cls2", "label"):
        if ext in files:
            set_label(sample, files[ext].decode("utf-8", errors="replace"))
            break
    return sample


def read_tar_samples(
    stream: IO[bytes] | _Whole,
    text_fields: Sequence[str] = ("text",),
    pair_field: str | None = None,
    label_field: str = "label",
) -> Iterator[Sample]:
    """Samples of a webdataset tar stream: consecutive members sharing a key form one sample
    (`pair_field`, `label_field`: as `sample_from_files` reads them)."""
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
                    yield sample_from_files(key, files, text_fields, pair_field, label_field)
                key, files = name_key, {}
            f = tar.extractfile(member)
            if f is not None:
                files[ext] = f.read()
    if key is not None and files:
        yield sample_from_files(key, files, text_fields, pair_field, label_field)


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
    A remote shard (http(s), pipe:, fsspec) that fails mid-read is reopened up to `retries`
    times with back-off and read on from the sample it stopped at; a shard that still fails (or a
    local one that is truncated) raises `UnreadableShard`, and the reader skips the rest of it.
    """

    def __init__(
        self,
        urls: Sequence[str],
        text_fields: Sequence[str] = ("text",),
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        preview_size: int = 1024,
        timeout: float = 5.0,
        retries: int = 3,
        pair_field: str | None = None,
        label_field: str = "label",
    ) -> None:
        super().__init__(shuffle_buffer, resampled, preview_size)
        if not urls:
            raise SourceError("webdataset source without shards: set shards: [paths or URLs]")
        self.urls = list(urls)
        self.text_fields = tuple(text_fields)
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = 1.0  # seconds before the first retry; doubled at each further one
        self.pair_field, self.label_field = pair_field, label_field

    def num_shards(self) -> int:
        """Number of tar shards."""
        return len(self.urls)

    def shard_samples(self, shard: int) -> Iterator[Sample]:
        """Samples of tar `shard` in order; remote shards are retried (see the class doc)."""
        url, done, failures = self.urls[shard], 0, 0
        while True:
            try:
                with open_shard(url, self.timeout) as stream:
                    samples = read_tar_samples(
                        stream, self.text_fields, self.pair_field, self.label_field
                    )
                    for i, sample in enumerate(samples):
                        if i >= done:  # after a reopen: the samples read before are passed over
                            done = i + 1
                            yield sample
                return
            except (tarfile.TarError, OSError, EOFError) as exc:
                failures += 1
                if not _is_url(url) or failures > self.retries:
                    tries = f" after {failures} tries" if _is_url(url) else ""
                    raise UnreadableShard(
                        f"shard {url} failed at sample {done}{tries}: {exc}"
                    ) from None
                delay = self.backoff * 2 ** (failures - 1)
                log.info("shard %s failed at sample %d (%s); retry in %.0fs", url, done, exc, delay)
                time.sleep(delay)

    def describe(self) -> str:
        """Shard count and the first shard."""
        return f"webdataset ({len(self.urls)} shards: {self.urls[0]}, ...)"


def _patterns(cfg: SourceConfig) -> list[str]:
    """The configured shard patterns (`shards`, else `path`)."""
    return list(cfg.shards) or ([cfg.path] if cfg.path else [])


MANIFEST = "manifest.json"
"""What `flava.data.write_shards` writes beside its shards (counts, source, class names)."""


def manifest_classes(urls: Sequence[str]) -> list[str] | None:
    """The class names of local shards written by `flava.data.write_shards`: the `classes` of
    the `manifest.json` beside them, when every folder of shards has the same list; else None."""
    found = []
    for folder in {Path(u).parent for u in urls if not _is_url(u)}:
        try:
            classes = json.loads((folder / MANIFEST).read_text()).get("classes")
        except (OSError, ValueError, AttributeError):
            return None
        found.append(classes)
    if not found or not found[0] or any(c != found[0] for c in found):
        return None
    return [str(c) for c in found[0]]


def _build(cfg: SourceConfig, role: str, image_size: int) -> TarShards:
    urls = expand_shards(_patterns(cfg))
    shards = TarShards(
        urls,
        text_fields=list(cfg.text_columns),
        shuffle_buffer=cfg.shuffle_buffer,
        resampled=cfg.resampled,
        preview_size=cfg.preview_size,
        timeout=cfg.timeout,
        retries=cfg.retries,
        pair_field=cfg.text_pair_column,
        label_field=cfg.label_column,
    )
    shards.class_names = manifest_classes(urls)
    return shards


def _check(cfg: SourceConfig) -> None:
    patterns = _patterns(cfg)
    if not patterns:
        raise SourceError("webdataset source without shards: set shards: [paths or URLs]")
    expand_shards(patterns)


WEBDATASET = SourceType(
    "webdataset",
    (
        "shards",
        "path",
        "text_columns",
        "text_pair_column",
        "label_column",
        "shuffle_buffer",
        "resampled",
        "preview_size",
        "timeout",
        "retries",
    ),
    _build,
    _check,
    frozenset({LABELLED_IMAGES, CAPTIONED_IMAGES}),
)
"""`type: webdataset`: tar `shards` (or one `path`), streamed."""
