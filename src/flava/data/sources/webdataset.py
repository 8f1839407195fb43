"""webdataset tar shards: brace / glob / folder expansion, local, http(s), pipe: and fsspec URLs."""

from __future__ import annotations

import json
import logging
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from flava.config import SourceConfig
from flava.data.sources.errors import SourceError, UnreadableShard
from flava.data.sources.images import IMAGE_EXTENSIONS, LISTED_NON_RASTER
from flava.data.sources.readers import StreamingSource
from flava.data.sources.registry import CAPTIONED_IMAGES, LABELLED_IMAGES, SourceType
from flava.data.sources.remote import CHUNK, ResumingStream, is_url, open_shard, read_range
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


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Shard paths / URLs from patterns: braces, globs, folders of *.tar; missing -> SourceError."""
    out: list[str] = []
    for pattern in patterns:
        for item in expand_braces(str(pattern)):
            if _listed_remote(item):
                out += _list_remote(item)
                continue
            if is_url(item):
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


def _listed_remote(item: str) -> bool:
    """An fsspec URL (s3://, gs://, ...) naming a glob or a folder (a trailing /) of shards."""
    listed = item.endswith("/") or any(c in item for c in "*?[")
    return listed and is_url(item) and not item.startswith(("pipe:", "http://", "https://"))


def _list_remote(item: str) -> list[str]:
    """The shards of an fsspec glob or folder URL, listed on the store, sorted."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(item)
        protocol = item.split("://", 1)[0]
        if item.endswith("/"):
            names = [p for p in fs.ls(path, detail=False) if p.endswith((".tar", ".tar.gz"))]
        else:
            names = list(fs.glob(path))
    except (OSError, ValueError, ImportError) as exc:
        raise SourceError(f"cannot list shards at {item} ({exc}); {_SHARD_HINT}") from None
    if not names:
        raise SourceError(f"no shards at {item}; {_SHARD_HINT}")
    return sorted(f"{protocol}://{fs._strip_protocol(n)}" for n in names)


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset (key, extension): `dir/000042.seg.jpg` -> (`dir/000042`, `seg.jpg`)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def image_member(extensions: Iterable[str]) -> str | None:
    """Which member of a webdataset sample is its image, by extension: the first raster image,
    else the first SVG / PDF / HEIC (decoding names it, and it is counted), else None."""
    found = list(extensions)
    for kinds in (IMAGE_EXTENSIONS, LISTED_NON_RASTER):
        for ext in found:
            if ext.rsplit(".", 1)[-1] in kinds:
                return ext
    return None


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
    image = image_member(files)
    sample.image = files[image] if image is not None else None
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
            read = {*text_fields, *CAPTION_FIELDS, pair_field, label_field}
            sample.meta = {k: v for k, v in meta.items() if k not in read}
    for ext in ("cls", "cls2", "label"):
        if ext in files:
            set_label(sample, files[ext].decode("utf-8", errors="replace"))
            break
    return sample


def read_tar_samples(
    stream: IO[bytes] | ResumingStream,
    text_fields: Sequence[str] = ("text",),
    pair_field: str | None = None,
    label_field: str = "label",
) -> Iterator[Sample]:
    """Samples of a webdataset tar stream: consecutive members sharing a key form one sample
    (`pair_field`, `label_field`: as `sample_from_files` reads them). In an uncompressed tar
    each sample's `image_range` says where its image member's bytes lie (a gzipped one's
    offsets count decompressed bytes, so it gets none)."""
    key: str | None = None
    files: dict[str, bytes] = {}
    spans: dict[str, tuple[int, int]] = {}
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        plain = getattr(tar.fileobj, "comptype", None) == "tar"
        for member in tar:
            if not member.isfile():
                continue
            name_key, ext = split_member_name(member.name)
            if not ext or name_key.rpartition("/")[2].startswith((".", "_")):
                continue  # no extension, hidden files, __key__-style metadata
            if name_key != key:
                if key is not None and files:
                    yield _sample(key, files, spans, text_fields, pair_field, label_field)
                key, files, spans = name_key, {}, {}
            f = tar.extractfile(member)
            if f is not None:
                files[ext] = f.read()
                if plain:
                    spans[ext] = (member.offset_data, member.size)
    if key is not None and files:
        yield _sample(key, files, spans, text_fields, pair_field, label_field)


def _sample(
    key: str,
    files: dict[str, bytes],
    spans: dict[str, tuple[int, int]],
    text_fields: Sequence[str],
    pair_field: str | None,
    label_field: str,
) -> Sample:
    """`sample_from_files`, with the image member's byte range when `spans` holds it."""
    sample = sample_from_files(key, files, text_fields, pair_field, label_field)
    image = image_member(files)
    sample.image_range = spans.get(image) if image is not None else None
    return sample


def read_member_at(
    url: str, key: str, offset: int, size: int, timeout: float = 5.0
) -> bytes | None:
    """The `size` bytes at `offset` of uncompressed tar shard `url` (local, http(s) or fsspec:
    one ranged read, `read_range`), when the 512-byte header just before them is that of a
    file of sample `key`, an image by its extension, of that size; else None (the shard was
    written again, a long name put its own header in between, the shard cannot be read so).
    What `Sample.image_range` recorded, read back without the rest of the shard."""
    if offset < tarfile.BLOCKSIZE or size < 0:
        return None
    start = offset - tarfile.BLOCKSIZE
    try:
        data = read_range(url, start, offset + size, timeout)
        header = tarfile.TarInfo.frombuf(
            data[: tarfile.BLOCKSIZE], tarfile.ENCODING, "surrogateescape"
        )
    except Exception as exc:  # a transport's errors come in many types; the caller scans
        log.info("no byte range of %s at %d: %s", url, offset, exc)
        return None
    name_key, ext = split_member_name(header.name)
    fits = header.isfile() and header.size == size and len(data) == offset + size - start
    if not fits or name_key != key or image_member([ext]) is None:
        return None
    return data[tarfile.BLOCKSIZE :]


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
    A sample of an uncompressed shard carries its image member's byte range (`image_range`),
    which `read_member_at` reads back alone.
    A remote shard (http(s), pipe:, fsspec) whose read fails is reopened at the byte it reached,
    after a back-off (`backoff` seconds, doubled at each further failure), and read on
    (`flava.data.sources.remote`); after `retries` failures in a row without a new byte (or for
    a local shard that is truncated) it raises `UnreadableShard`, and the reader skips the rest.
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
        backoff: float = 1.0,
        chunk: int = CHUNK,
    ) -> None:
        super().__init__(shuffle_buffer, resampled, preview_size)
        if not urls:
            raise SourceError("webdataset source without shards: set shards: [paths or URLs]")
        self.urls = list(urls)
        self.text_fields = tuple(text_fields)
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = float(backoff)  # seconds before the first retry; doubled at each further
        self.chunk = int(chunk)  # bytes per read of a remote shard
        self.pair_field, self.label_field = pair_field, label_field

    def num_shards(self) -> int:
        """Number of tar shards."""
        return len(self.urls)

    def shard_samples(self, shard: int) -> Iterator[Sample]:
        """Samples of tar `shard` in order; a remote one resumes after failures (class doc)."""
        url, done = self.urls[shard], 0
        try:
            with open_shard(url, self.timeout, self.retries, self.backoff, self.chunk) as stream:
                samples = read_tar_samples(
                    stream, self.text_fields, self.pair_field, self.label_field
                )
                for sample in samples:
                    done += 1
                    yield sample
        except (tarfile.TarError, OSError, EOFError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnreadableShard(f"shard {url} failed after {done} samples: {why}") from None

    def describe(self) -> str:
        """Shard count and the first shard."""
        return f"webdataset ({len(self.urls)} shards: {self.urls[0]}, ...)"


def _patterns(cfg: SourceConfig) -> list[str]:
    """The configured shard patterns (`shards`, else `path`)."""
    return list(cfg.shards) or ([cfg.path] if cfg.path else [])


MANIFEST = "manifest.json"
"""What `flava.data.write_shards` writes beside its shards (counts, source, class names)."""


def _read_manifest(folder: str) -> Any:
    """The manifest.json of a local folder or an fsspec URL folder."""
    if not is_url(folder):
        return json.loads((Path(folder) / MANIFEST).read_text())
    import fsspec

    with fsspec.open(f"{folder}/{MANIFEST}", "rb") as f:
        return json.loads(f.read())


def manifest_classes(urls: Sequence[str]) -> list[str] | None:
    """The class names of shards written by `flava.data.write_shards` (local, or at an fsspec
    URL): the `classes` of the `manifest.json` beside them, when every folder of shards has the
    same list; else None."""
    found = []
    remote = [u for u in urls if is_url(u) and not u.startswith(("pipe:", "http://", "https://"))]
    folders = {str(Path(u).parent) for u in urls if not is_url(u)}
    folders |= {u.rsplit("/", 1)[0] for u in remote}
    for folder in folders:
        try:
            classes = _read_manifest(folder).get("classes")
        except (OSError, ValueError, AttributeError, ImportError):
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
        backoff=cfg.retry_backoff,
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
        "retry_backoff",
    ),
    _build,
    _check,
    frozenset({LABELLED_IMAGES, CAPTIONED_IMAGES}),
)
"""`type: webdataset`: tar `shards` (or one `path`), streamed."""
