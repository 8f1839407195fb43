"""`flava-write-shards src=SRC dst=DST shard_size=N`: write webdataset tar shards.

SRC is a data path whose type is detected (a folder with captions.jsonl / captions.csv, an
image-class folder, text files, a Hugging Face dataset saved with `save_to_disk`), a YAML / JSON
file holding one `SourceConfig`, or the word `embedded`; instead of src, the source's fields can
be given as `source.*` keys (`source.type=huggingface source.path=/data/hf
source.split=validation`). DST receives `shards-000000.tar`, ... of N good samples each (the
last one shorter) and `manifest.json` (shard names, the source sample range of each shard,
sample counts, skipped samples per reason, the source). Keys come as `key=value` and from
`config=FILE`, like every command's; the older form `python -m flava.data.write_shards SRC DST
--shard-size N --max-side 512` (flags for keys, `type=... path=...` for source.* fields) is read
as the same keys.

Every image is decoded once to check it; JPEG and PNG are then stored as they are (`reencode`
or `max_side` re-encode them), other images become JPEG of `quality`. A sample that cannot
be used (an SVG, empty, truncated or unreadable image, a decompression bomb, a missing file or
dead URL, no image where the source has images, an empty caption) is skipped and counted under
its `flava.data.sources.SKIP_REASONS` entry; each reason is logged once, with its first sample,
by the main process (worker processes hand theirs over with their counts). Shards are written in
order, each under a temporary name renamed when complete, so a rerun keeps the complete shards
and goes on after them. Progress goes to stdout. Exit status: 0; 1 when more than
`max_skipped_fraction` (default 0.1) of the samples read were skipped (the shards and manifest
are still written); 2 for a bad source or argument; each failure is one line on stderr.
Read the result with `{type: webdataset, shards: [DST]}`.

Examples:
    flava-write-shards src=/data/my_captions dst=/data/shards/mine shard_size=1000
    flava-write-shards source.type=huggingface source.path=/data/hf_saved dst=out shard_size=5000
    python -m flava.data.write_shards /data/my_captions /data/shards/mine --shard-size 1000
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import queue
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from flava import config
from flava.config import (
    ConfigError,
    SourceConfig,
    WriteShardsConfig,
    load_config,
    validate_write_shards,
)
from flava.config import describe as describe_keys
from flava.config.write_shards import from_old_form
from flava.data.sources import (
    SAMPLE_ERRORS,
    SKIP_REASONS,
    DataError,
    Sample,
    SkipLog,
    SourceError,
    StreamingSource,
    check_fields,
    decode_image,
    describe,
    fetch_image,
    image_format,
    too_many_skipped,
)
from flava.data.sources.skips import log_first, new_run
from flava.data.sources.webdataset import MANIFEST
from flava.data.transforms import to_rgb

log = logging.getLogger("flava.write_shards")

Files = list[tuple[str, bytes]]  # the tar members of one sample: (name, bytes)
_TEXT_COLUMNS = ("text", "caption", "captions", "sentences", "sentence")


def detect(path: str) -> dict[str, Any]:
    """The `SourceConfig` fields for a data path, by what it holds."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"{p} not found")
    if p.is_file():
        if p.suffix in (".txt", ".jsonl"):
            return {"type": "text_files", "path": str(p)}
        raise SourceError(f"{p}: give a folder, a .txt / .jsonl file, or key=value fields")
    names = {c.name for c in p.iterdir()}
    if names & {"dataset_info.json", "state.json", "dataset_dict.json"}:
        import datasets

        saved = datasets.load_from_disk(str(p))
        columns = next(iter(saved.values())) if isinstance(saved, dict) else saved
        texts = [c for c in _TEXT_COLUMNS if c in columns.column_names]
        split = "train" if isinstance(saved, dict) and "train" in saved else None
        return {"type": "huggingface", "path": str(p), "split": split, "text_columns": texts}
    if names & {"captions.jsonl", "captions.csv"}:
        return {"type": "captions", "path": str(p)}
    if any(c.is_dir() for c in p.iterdir()):
        return {"type": "image_folder", "path": str(p)}
    if any(n.endswith((".txt", ".jsonl")) for n in names):
        return {"type": "text_files", "path": str(p)}
    raise SourceError(
        f"{p}: cannot tell its type (no captions.jsonl / captions.csv, class folders, text "
        "files or save_to_disk dataset); pass type=... path=..."
    )


def source_config(src: str | None, fields: Any = None) -> Any:
    """A validated `SourceConfig`: of `src` (a data path whose type is detected, a YAML / JSON
    file of one source's fields, or `embedded` with `fields`), else of `fields` (a mapping of
    its fields)."""
    if src == "embedded":
        fields = OmegaConf.merge(fields or {}, {"type": "embedded"})
    elif src is not None:
        path = Path(src).expanduser()
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
            try:
                fields = OmegaConf.to_container(OmegaConf.load(path))
            except Exception as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc})") from None
            if not isinstance(fields, dict):
                raise ConfigError(f"{path}: expected one source's fields (type: ..., path: ...)")
        else:
            fields = detect(src)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SourceConfig), fields or {})
    except OmegaConfBaseException as exc:
        raise ConfigError(f"source: {str(exc).splitlines()[0]}") from None
    check_fields(cfg, "source")
    return cfg


def open_source(cfg: Any, role: str = "train", image_size: int = 224) -> Any:
    """A random-access source with `sample(index)` for `cfg`."""
    from flava.data import sources

    source = sources.build(cfg, role, image_size)
    if isinstance(source, StreamingSource):
        raise SourceError(
            f"{source.describe()} is streamed; write_shards reads random-access sources "
            "(folders, text files, saved or downloaded Hugging Face sets, embedded)"
        )
    return source


def sample_kind(source: Any) -> str:
    """What every sample of `source` must hold: "vl" (image and text), "image" or "text"."""
    kinds = getattr(source, "kinds", frozenset({"image", "text", "vl"}))
    if "image" in kinds and "text" in kinds:
        return "vl"
    return "image" if "image" in kinds else "text"


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
    sample: Sample, key: str, quality: int, reencode: bool, max_side: int | None
) -> list[tuple[str, bytes]]:
    """The tar members of one sample: image, txt (one caption) or json (several), cls."""
    files = []
    if sample.image is not None:
        ext, data = encode_image(sample.image, quality, reencode, max_side)
        files.append((f"{key}.{ext}", data))
    if len(sample.texts) == 1:
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


class Prepared(NamedTuple):
    """One source sample, prepared: its tar members (None: skipped), its skip counts, and the
    first example of each reason met in a worker process (for the parent to log)."""

    index: int
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
        files = sample_files(sample, key, options.quality, options.reencode, options.max_side)
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
) -> Iterator[Prepared]:
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


def _prepared(source: Any, options: Options, indices: range, processes: int) -> Iterator[Prepared]:
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


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


class _ShardFile:
    """One shard being written (a temporary tar renamed when closed) and its manifest entry."""

    def __init__(self, path: Path, start: int) -> None:
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.tar = tarfile.open(self.tmp, "w")  # closed by `close`
        self.entry: dict[str, Any] = {
            "name": path.name,
            "samples": 0,
            "start": start,
            "stop": start,
            "samples_read": 0,
            "skipped": {},
        }

    def add(self, index: int, files: Files | None, skipped: dict[str, int]) -> None:
        """Add source sample `index`: its members, or its skip counts."""
        for name, data in files or []:
            _add(self.tar, name, data)
        self.entry["samples"] += files is not None
        self.entry["samples_read"] += 1
        self.entry["stop"] = index + 1
        for reason, n in skipped.items():
            self.entry["skipped"][reason] = self.entry["skipped"].get(reason, 0) + n

    def close(self) -> dict[str, Any]:
        """Finish the tar, rename it to its final name; the manifest entry."""
        self.tar.close()
        os.replace(self.tmp, self.path)
        counts = self.entry["skipped"]
        self.entry["skipped"] = {r: counts[r] for r in SKIP_REASONS if r in counts}
        return self.entry


def _fill(
    prepared: Iterator[Prepared],
    out: Path,
    prefix: str,
    number: int,
    shard_size: int,
    record: Callable[[dict[str, Any]], None],
) -> None:
    """Write prepared samples into shards `number`, ... of `shard_size` good samples; a full
    shard closes at the next good sample, so bad samples count in the shard before them."""
    shard: _ShardFile | None = None
    for index, files, skipped, _ in prepared:
        if shard is not None and files is not None and shard.entry["samples"] >= shard_size:
            record(shard.close())
            shard, number = None, number + 1
        if shard is None:
            shard = _ShardFile(out / f"{prefix}-{number:06d}.tar", index)
        shard.add(index, files, skipped)
    if shard is not None:
        record(shard.close())


def count_samples(path: Path) -> int:
    """Samples (distinct keys) in a tar shard; -1 if it cannot be read."""
    from flava.data.sources import split_member_name

    keys = set()
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if member.isfile():
                    keys.add(split_member_name(member.name)[0])
    except (tarfile.TarError, OSError, EOFError):
        return -1
    return len(keys)


def _resume(out: Path, total: int, shard_size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """(the leading shards of an earlier run still complete on disk, all its shard names)."""
    path = out / MANIFEST
    if not path.is_file():
        return [], []
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON; delete it to write {out} again") from None
    if (old.get("source_samples"), old.get("shard_size")) != (total, shard_size):
        raise ConfigError(
            f"{out} holds shards of another source or shard size ({old.get('source')}: "
            f"{old.get('source_samples', old.get('num_samples'))} samples, shard size "
            f"{old.get('shard_size')}); use a new dst or delete it"
        )
    kept: list[dict[str, Any]] = []
    for entry in old.get("shards", []):
        if "stop" not in entry or count_samples(out / entry["name"]) != entry["samples"]:
            break  # this one and the ones after it are written again (the same, in order)
        kept.append(entry)
    return kept, [entry["name"] for entry in old.get("shards", [])]


def _totals(manifest: dict[str, Any], shards: list[dict[str, Any]], total: int) -> None:
    """Set the manifest's shard list, sample and skip counts, and whether it is complete."""
    skipped = {r: sum(s["skipped"].get(r, 0) for s in shards) for r in SKIP_REASONS}
    manifest["num_samples"] = sum(s["samples"] for s in shards)
    manifest["samples_read"] = sum(s["samples_read"] for s in shards)
    manifest["skipped"] = {r: n for r, n in skipped.items() if n}
    manifest["num_shards"] = len(shards)
    manifest["shards"] = list(shards)
    manifest["complete"] = bool(shards) and shards[-1]["stop"] == total


def _new_manifest(
    source: Any, fields: dict[str, Any], shard_size: int, options: Options
) -> dict[str, Any]:
    """The manifest of an empty output (its counts are set by `_totals`)."""
    _, quality, reencode, max_side = options
    manifest: dict[str, Any] = {
        "format": "webdataset",
        "source": describe(source),
        "source_config": fields,
        "source_samples": len(source),
        "shard_size": shard_size,
        "images": "JPEG (re-encoded)" if reencode or max_side else "original JPEG/PNG, else JPEG",
        "jpeg_quality": quality,
        "max_side": max_side,
    }
    if hasattr(source, "classes"):
        manifest["classes"] = list(source.classes)
    return manifest


def write(
    source: Any,
    out_dir: str | os.PathLike,
    shard_size: int,
    prefix: str = "shards",
    quality: int = 95,
    reencode: bool = False,
    max_side: int | None = None,
    processes: int = 1,
    source_fields: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the good samples of `source` as shards of `shard_size` into `out_dir`, skipping
    and counting bad ones; the manifest."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    total = len(source)
    if total == 0:
        raise SourceError(f"{describe(source)} has no samples")
    new_run()  # each skip reason is logged once per run
    options = Options(sample_kind(source), quality, reencode, max_side)
    manifest = _new_manifest(source, source_fields or {}, shard_size, options)
    shards, old_names = _resume(out, total, shard_size)
    for stale in out.glob(f".{prefix}-*.tar.tmp"):
        stale.unlink()  # a partial shard of an interrupted run

    def save() -> None:
        _totals(manifest, shards, total)
        tmp = out / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, out / MANIFEST)

    def record(entry: dict[str, Any]) -> None:
        shards.append(entry)
        save()
        if progress:
            read = f"samples {entry['start']}..{entry['stop'] - 1} of {total}"
            progress(f"{entry['name']}: {entry['samples']} samples ({read})")

    if progress and shards:
        progress(f"{len(shards)} complete shard(s) kept")
    start = shards[-1]["stop"] if shards else 0
    if start < total:
        stream = _prepared(source, options, range(start, total), processes)
        with contextlib.closing(stream) as prepared:
            _fill(prepared, out, prefix, len(shards), shard_size, record)
    save()
    for name in set(old_names) - {s["name"] for s in shards}:
        (out / name).unlink(missing_ok=True)  # an earlier run's shard past the new last one
    return manifest


def _reasons(manifest: dict[str, Any]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in manifest["skipped"].items())


def summary(manifest: dict[str, Any], out_dir: str) -> str:
    """One line: samples and shards written, samples skipped per reason, how to read them."""
    line = f"{manifest['num_samples']} samples in {manifest['num_shards']} shards -> {out_dir}"
    skipped = sum(manifest["skipped"].values())
    if skipped:
        line += f"; {skipped} of {manifest['samples_read']} skipped ({_reasons(manifest)})"
    return f"{line} (read with {{type: webdataset, shards: [{out_dir}]}})"


def skipped_error(manifest: dict[str, Any], limit: float, out_dir: str) -> str | None:
    """The one-line error when too many samples were skipped (`datasets.max_skipped_fraction`'s
    rule: more than `limit` of the samples read), else None."""
    read = manifest["samples_read"]
    if manifest["num_samples"] == 0:
        return f"all {read} samples were skipped ({_reasons(manifest)}); fix the data"
    reason = too_many_skipped(manifest["skipped"], read, limit, "samples")
    if reason is None:
        return None
    hint = "fix the data or pass max_skipped_fraction=1 (--max-skipped-fraction 1)"
    return f"{reason}; shards in {out_dir} hold the rest; {hint}"


class TooManySkipped(Exception):
    """More than `max_skipped_fraction` of the samples read were skipped (exit status 1)."""


def run(cfg: DictConfig) -> dict[str, Any]:
    """Write the shards `cfg` (a `WriteShardsConfig`) asks for and print the summary line; the
    manifest. `TooManySkipped` when too many samples were bad (the shards are written)."""
    source_cfg = source_config(cfg.src, cfg.source)
    source = open_source(source_cfg, cfg.role.value, cfg.image_size)
    defaults = SourceConfig()
    fields = {
        k: v
        for k, v in OmegaConf.to_container(source_cfg).items()  # type: ignore[union-attr]
        if v != getattr(defaults, k)
    }
    options = {k: cfg[k] for k in ("prefix", "quality", "reencode", "max_side", "processes")}
    manifest = write(
        source, cfg.dst, cfg.shard_size, **options, source_fields=fields, progress=log.info
    )
    print(summary(manifest, cfg.dst))
    error = skipped_error(manifest, cfg.max_skipped_fraction, cfg.dst)
    if error:
        raise TooManySkipped(error)
    return manifest


def load(argv: list[str]) -> DictConfig:
    """The command's config from `argv`: keys (`src=... dst=... shard_size=5000`, `config=FILE`)
    or the older form (`SRC DST --shard-size 5000`), validated."""
    return load_config(from_old_form(argv), WriteShardsConfig, validate_write_shards)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1: too many bad samples, 2: bad source/argument).
    Progress and the skip lines go to stdout, errors to stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return config.cli_main(  # looked up when called: `flava-write-shards` runs this main too
        argv,
        __doc__,
        lambda: describe_keys(WriteShardsConfig),
        load,
        run,
        stop_errors=(TooManySkipped, DataError),
    )


if __name__ == "__main__":
    sys.exit(main())
