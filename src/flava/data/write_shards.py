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
Read the result with `{type: webdataset, shards: [DST]}`. `layout=clip_benchmark` writes LAION
CLIP_benchmark's local `wds/` layout instead (`flava.data.benchmark_layout`: DST/<split>/0.tar,
..., nshards.txt, the class names and templates or dataset_type.txt).

Examples:
    flava-write-shards src=/data/my_captions dst=/data/shards/mine shard_size=1000
    flava-write-shards source.type=huggingface source.path=/data/hf_saved dst=out shard_size=5000
    python -m flava.data.write_shards /data/my_captions /data/shards/mine --shard-size 1000
    flava-write-shards src=/data/my_classes dst=/data/bench/mine layout=clip_benchmark
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from flava import config
from flava.config import (
    ConfigError,
    SourceConfig,
    WriteShardsConfig,
    load_config,
    validate_write_shards,
)
from flava.config import describe as describe_keys
from flava.config.checks import given
from flava.config.common import set_fields
from flava.config.loader import from_fields
from flava.config.write_shards import DST_UNSET, ShardLayout, from_old_form
from flava.data import benchmark_layout
from flava.data.sources import (
    SKIP_REASONS,
    DataError,
    IndexedSource,
    SourceError,
    StreamingSource,
    check_fields,
    describe,
    too_many_skipped,
)
from flava.data.sources.skips import new_run
from flava.data.sources.webdataset import MANIFEST
from flava.data.tar_samples import Files, Options, Prepared, prepared
from flava.objectives.kinds import Kind

log = logging.getLogger("flava.write_shards")

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


def source_config(
    src: str | None, fields: SourceConfig | Mapping[str, Any] | None = None
) -> SourceConfig:
    """A validated `SourceConfig`: of `src` (a data path whose type is detected, a YAML / JSON
    file of one source's fields, or `embedded` with `fields`), else of `fields` (its fields, or
    a `SourceConfig`)."""
    parts: list[SourceConfig | Mapping[str, Any]] = [fields or {}]
    if src == "embedded":
        parts.append({"type": "embedded"})
    elif src is not None:
        path = Path(src).expanduser()
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
            try:
                read = OmegaConf.to_container(OmegaConf.load(path))
            except Exception as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc})") from None
            if not isinstance(read, dict):
                raise ConfigError(f"{path}: expected one source's fields (type: ..., path: ...)")
            parts = [{str(k): v for k, v in read.items()}]
        else:
            parts = [detect(src)]
    cfg = from_fields(SourceConfig, *parts, where="source")
    check_fields(cfg, "source")
    return cfg


def open_source(cfg: SourceConfig, role: str = "train", image_size: int = 224) -> IndexedSource:
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
    kinds = getattr(source, "kinds", frozenset(Kind))
    if Kind.image in kinds and Kind.text in kinds:
        return Kind.vl
    return Kind.image if Kind.image in kinds else Kind.text


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


def shard_name(prefix: str, number: int) -> str:
    """`<prefix>-000007.tar`; without a prefix `7.tar` (CLIP_benchmark's naming)."""
    return f"{prefix}-{number:06d}.tar" if prefix else f"{number}.tar"


def fill_shards(
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
            shard = _ShardFile(out / shard_name(prefix, number), index)
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


def set_totals(manifest: dict[str, Any], shards: list[dict[str, Any]], total: int) -> None:
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
    """The manifest of an empty output (its counts are set by `set_totals`)."""
    _, quality, reencode, max_side, _ = options
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
    caption_lines: bool = False,
) -> dict[str, Any]:
    """Write the good samples of `source` as shards of `shard_size` into `out_dir`, skipping
    and counting bad ones; the manifest. `caption_lines`: a sample's captions on the lines of
    one .txt (CLIP_benchmark), not a .json of several."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    total = len(source)
    if total == 0:
        raise SourceError(f"{describe(source)} has no samples")
    new_run()  # each skip reason is logged once per run
    options = Options(sample_kind(source), quality, reencode, max_side, caption_lines)
    manifest = _new_manifest(source, source_fields or {}, shard_size, options)
    shards, old_names = _resume(out, total, shard_size)
    for stale in out.glob(f".{prefix}-*.tar.tmp" if prefix else ".[0-9]*.tar.tmp"):
        stale.unlink()  # a partial shard of an interrupted run

    def save() -> None:
        set_totals(manifest, shards, total)
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
        stream = prepared(source, options, range(start, total), processes)
        with contextlib.closing(stream) as samples:
            fill_shards(samples, out, prefix, len(shards), shard_size, record)
    save()
    for name in set(old_names) - {s["name"] for s in shards}:
        (out / name).unlink(missing_ok=True)  # an earlier run's shard past the new last one
    return manifest


def _reasons(manifest: dict[str, Any]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in manifest["skipped"].items())


def summary(manifest: dict[str, Any], out_dir: str, benchmark: Any = None) -> str:
    """One line: samples and shards written, samples skipped per reason, how to read them
    (`benchmark`: the CLIP_benchmark set written, if that is the layout)."""
    line = f"{manifest['num_samples']} samples in {manifest['num_shards']} shards -> {out_dir}"
    skipped = sum(manifest["skipped"].values())
    if skipped:
        line += f"; {skipped} of {manifest['samples_read']} skipped ({_reasons(manifest)})"
    if benchmark is not None:
        root, split = Path(out_dir).parent, Path(out_dir).name
        return (
            f"{line} (a CLIP_benchmark {benchmark.task} set: python -m flava.clip_benchmark eval "
            f"--dataset wds/{root.name} --dataset_root {root} --split {split} "
            f"--task {benchmark.task} --model_type flava --pretrained MODEL)"
        )
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


def run(cfg: WriteShardsConfig) -> dict[str, Any]:
    """Write the shards `cfg` (a `WriteShardsConfig`) asks for and print the summary line; the
    manifest. `TooManySkipped` when too many samples were bad (the shards are written)."""
    source_cfg = source_config(cfg.src, cfg.source)
    source = open_source(source_cfg, cfg.role.value, cfg.image_size)
    fields = {name: getattr(source_cfg, name) for name in set_fields(source_cfg)}
    dst = given(cfg.dst, DST_UNSET)
    out, chosen, prefix, lines = dst, None, cfg.prefix, False
    if cfg.layout == ShardLayout.clip_benchmark:
        where = describe(source)
        chosen = benchmark_layout.plan(source, source_cfg.type, cfg.clip_benchmark, where)
        source, out = chosen.source, str(Path(dst) / cfg.clip_benchmark.split)
        prefix, lines = "", chosen.retrieval
    manifest = write(
        source,
        out,
        cfg.shard_size,
        prefix,
        cfg.quality,
        cfg.reencode,
        cfg.max_side,
        cfg.processes,
        source_fields=fields,
        progress=log.info,
        caption_lines=lines,
    )
    if chosen is not None:
        benchmark_layout.finish(Path(dst).expanduser(), Path(out).expanduser(), manifest, chosen)
    print(summary(manifest, out, chosen))
    error = skipped_error(manifest, cfg.max_skipped_fraction, out)
    if error:
        raise TooManySkipped(error)
    return manifest


def load(argv: list[str]) -> WriteShardsConfig:
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
