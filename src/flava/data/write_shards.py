"""`python -m flava.data.write_shards SRC OUT_DIR --shard-size N`: write webdataset tar shards.

SRC is a data path whose type is detected (a folder with captions.jsonl / captions.csv, an
image-class folder, text files, a Hugging Face dataset saved with `save_to_disk`), a YAML / JSON
file holding one `SourceConfig`, the word `embedded`, or `key=value` fields of a `SourceConfig`
(`type=huggingface path=/data/hf split=validation`). OUT_DIR receives `shards-000000.tar`, ...
of N samples each (the last one shorter) and `manifest.json` (shard names, sample counts, the
source). Each shard is written under a temporary name and renamed when complete, so a rerun
skips complete shards and rewrites a partial one. JPEG and PNG images are stored as they are
(`--reencode` or `--max-side` re-encode them); other images become JPEG of `--quality`.
Read the result with `{type: webdataset, shards: [OUT_DIR]}`.

Examples:
    python -m flava.data.write_shards /data/my_captions /data/shards/mine --shard-size 1000
    python -m flava.data.write_shards type=huggingface path=/data/hf_saved out/ --shard-size 5000
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import os
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from flava.config import ConfigError, SourceConfig
from flava.data.sources import (
    Sample,
    SourceError,
    StreamingSource,
    decode_image,
    fetch,
    image_format,
)
from flava.data.transforms import to_rgb

log = logging.getLogger("flava.write_shards")

MANIFEST = "manifest.json"
_TEXT_COLUMNS = ("text", "caption", "captions", "sentences", "sentence")
_SOURCE: Any = None  # the source being written (inherited by forked writer processes)


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


def source_config(args: Sequence[str]) -> Any:
    """A validated `SourceConfig` from SRC arguments (path, YAML / JSON file, or key=value)."""
    fields: dict[str, Any]
    if len(args) == 1 and args[0] == "embedded":
        fields = {"type": "embedded"}
    elif len(args) == 1 and "=" not in args[0]:
        path = Path(args[0]).expanduser()
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
            try:
                loaded = OmegaConf.to_container(OmegaConf.load(path))
            except Exception as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc})") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected one source's fields (type: ..., path: ...)")
            fields = loaded
        else:
            fields = detect(args[0])
    else:
        bad = [a for a in args if "=" not in a]
        if bad:
            raise ConfigError(f"source argument {bad[0]!r} is not key=value (e.g. path=/data/x)")
        fields = OmegaConf.to_container(OmegaConf.from_dotlist(list(args)))  # type: ignore[assignment]
    try:
        return OmegaConf.merge(OmegaConf.structured(SourceConfig), fields)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"source: {str(exc).splitlines()[0]}") from None


class _Scenes:
    """The embedded scenes as raw samples (all captions of each scene)."""

    def __init__(self, cfg: Any, image_size: int, role: str) -> None:
        from flava.data.pretraining import SceneSource

        split = cfg.split or ("train" if role == "train" else "val")
        self.source = SceneSource(split, cfg.size, image_size, cfg.seed)

    def __len__(self) -> int:
        return len(self.source)

    def sample(self, index: int) -> Sample:
        scene = self.source.scenes[index]
        return Sample(key=str(index), image=scene.image, texts=list(scene.captions))

    def describe(self) -> str:
        return f"embedded scenes ({len(self)})"


def open_source(cfg: Any, role: str = "train", image_size: int = 224) -> Any:
    """A random-access source with `sample(index)` for `cfg`."""
    if cfg.type == "embedded":
        return _Scenes(cfg, image_size, role)
    from flava.data import sources

    source = sources.build(cfg, role)
    if isinstance(source, StreamingSource):
        raise SourceError(
            f"{source.describe()} is streamed; write_shards reads random-access sources "
            "(folders, text files, saved or downloaded Hugging Face sets, embedded)"
        )
    return source


def encode_image(
    image: bytes | Image.Image | str, quality: int, reencode: bool, max_side: int | None
) -> tuple[str, bytes]:
    """(extension, bytes): JPEG / PNG bytes kept, anything else (or asked) JPEG of `quality`."""
    if isinstance(image, str):
        image = fetch(image)
    if isinstance(image, bytes) and not reencode and max_side is None:
        fmt = image_format(image)
        if fmt in ("jpg", "png"):
            return fmt, image
    picture = to_rgb(decode_image(image))
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


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_shard(
    source: Any,
    path: Path,
    start: int,
    stop: int,
    quality: int = 95,
    reencode: bool = False,
    max_side: int | None = None,
) -> int:
    """Write samples start..stop-1 to `path` (via a temporary file, renamed when complete)."""
    tmp = path.with_name(f".{path.name}.tmp")
    written = 0
    with tarfile.open(tmp, "w") as tar:
        for index in range(start, stop):
            sample = source.sample(index)
            for name, data in sample_files(sample, f"{index:09d}", quality, reencode, max_side):
                _add(tar, name, data)
            written += 1
    os.replace(tmp, path)
    return written


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


def _write_job(job: tuple[int, str, int, int, int, bool, int | None]) -> tuple[int, int]:
    shard, path, start, stop, quality, reencode, max_side = job
    return shard, write_shard(_SOURCE, Path(path), start, stop, quality, reencode, max_side)


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
    """Write all samples of `source` as shards of `shard_size` into `out_dir`; the manifest."""
    global _SOURCE
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    total = len(source)
    describe = source.describe() if hasattr(source, "describe") else type(source).__name__
    if total == 0:
        raise SourceError(f"{describe} has no samples")
    count = (total + shard_size - 1) // shard_size
    names = [f"{prefix}-{i:06d}.tar" for i in range(count)]
    manifest_path = out / MANIFEST
    manifest: dict[str, Any] = {
        "format": "webdataset",
        "source": describe,
        "source_config": source_fields or {},
        "num_samples": total,
        "shard_size": shard_size,
        "num_shards": count,
        "images": "JPEG (re-encoded)" if reencode or max_side else "original JPEG/PNG, else JPEG",
        "jpeg_quality": quality,
        "max_side": max_side,
        "shards": [],
        "complete": False,
    }
    if hasattr(source, "classes"):
        manifest["classes"] = list(source.classes)
    done: dict[str, int] = {}
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if (old.get("num_samples"), old.get("shard_size")) != (total, shard_size):
            raise ConfigError(
                f"{out} holds shards of another source or shard size ({old.get('source')}: "
                f"{old.get('num_samples')} samples, shard size {old.get('shard_size')}); use a "
                "new OUT_DIR or delete it"
            )
        done = {s["name"]: int(s["samples"]) for s in old.get("shards", [])}
    for stale in out.glob(f".{prefix}-*.tar.tmp"):
        stale.unlink()  # a partial shard of an interrupted run
    jobs, finished = [], {}
    for i, name in enumerate(names):
        start, stop = i * shard_size, min(total, (i + 1) * shard_size)
        path = out / name
        if path.is_file():
            have = done.get(name)
            have = count_samples(path) if have is None else have
            if have == stop - start:
                finished[i] = have
                continue
        jobs.append((i, str(path), start, stop, quality, reencode, max_side))

    def save() -> None:
        manifest["shards"] = [{"name": names[k], "samples": finished[k]} for k in sorted(finished)]
        manifest["complete"] = len(finished) == count
        tmp = manifest_path.with_name(f".{MANIFEST}.tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, manifest_path)

    def record(shard: int, samples: int) -> None:
        finished[shard] = samples
        save()
        if progress:
            progress(f"{names[shard]}: {samples} samples ({len(finished)}/{count} shards)")

    if progress and finished:
        progress(f"{len(finished)} complete shard(s) kept")
    _SOURCE = source
    try:
        if processes > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                for shard, samples in pool.imap_unordered(_write_job, jobs):
                    record(shard, samples)
        else:
            for job in jobs:
                record(*_write_job(job))
    finally:
        _SOURCE = None
    save()
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad source or argument)."""
    parser = argparse.ArgumentParser(
        prog="python -m flava.data.write_shards",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("src", nargs="+", help="data path, source YAML/JSON, or key=value fields")
    parser.add_argument("out_dir", help="output folder (shards + manifest.json)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--prefix", default="shards", help="shard name prefix")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality when encoding")
    parser.add_argument("--reencode", action="store_true", help="re-encode every image as JPEG")
    parser.add_argument("--max-side", type=int, default=None, help="downscale longer sides")
    parser.add_argument("--processes", type=int, default=1, help="shards written in parallel")
    parser.add_argument("--role", default="train", choices=("train", "val"), help="split role")
    parser.add_argument("--image-size", type=int, default=224, help="embedded scenes' size")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = source_config(args.src)
        source = open_source(cfg, args.role, args.image_size)
        fields = {
            k: v
            for k, v in OmegaConf.to_container(cfg).items()  # type: ignore[union-attr]
            if v != getattr(SourceConfig(), k)
        }
        manifest = write(
            source,
            args.out_dir,
            args.shard_size,
            args.prefix,
            args.quality,
            args.reencode,
            args.max_side,
            args.processes,
            fields,
            progress=log.info,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{manifest['num_samples']} samples in {manifest['num_shards']} shards -> {args.out_dir}"
        f" (read with {{type: webdataset, shards: [{args.out_dir}]}})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
