"""Typed schema of `flava-write-shards` (`python -m flava.data.write_shards`); its checks, and
the translation of the older argument form (`SRC OUT_DIR --shard-size N`) into its keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from flava.config.checks import Check, Choice, ConfigError, fail_checks, given
from flava.config.common import PromptConfig, SourceConfig, prompt_checks, set_fields


class Role(Choice):
    """The split role a source reads (its default split: train / validation)."""

    train = "train"
    val = "val"


class ShardLayout(Choice):
    """How the shards are laid out and named."""

    flava = "flava"
    """DST/shards-000000.tar, ... + manifest.json (what `type: webdataset` reads)."""
    clip_benchmark = "clip_benchmark"
    """LAION CLIP_benchmark's local `wds/` dataset: DST/<split>/0.tar, 1.tar, ... +
    nshards.txt, and classnames.txt + zeroshot_classification_templates.txt (labelled images)
    or dataset_type.txt = retrieval (images with captions, all of an image's on its .txt's
    lines)."""


class BenchmarkTask(Choice):
    """What a CLIP_benchmark dataset is written for (its task names)."""

    auto = "auto"
    """Labelled images: zeroshot_classification; images with captions: zeroshot_retrieval."""
    zeroshot_classification = "zeroshot_classification"
    zeroshot_retrieval = "zeroshot_retrieval"


@dataclass
class ClipBenchmarkOptions(PromptConfig):
    """layout=clip_benchmark: the split folder, the task, and (classification) the class names
    and templates written, chosen as `flava.zero_shot` chooses them for the same data."""

    split: str = "test"
    """The split folder the shards go to (CLIP_benchmark's --split, default test)."""
    task: BenchmarkTask = BenchmarkTask.auto
    """zeroshot_classification or zeroshot_retrieval; auto: by what the source holds (needed
    for a source with both labels and captions, e.g. embedded)."""


@dataclass
class WriteShardsConfig:
    """`flava-write-shards`: webdataset tar shards and manifest.json from any random-access
    source."""

    src: str | None = None
    """What to write: a data path whose type is detected (a folder with captions.jsonl /
    captions.csv, an image-class folder, text files, a save_to_disk Hugging Face dataset), a
    YAML / JSON file holding one source's fields, or `embedded` (with source.size and
    source.seed if given). Leave unset to give the source.* fields instead."""
    dst: str | None = None
    """Output folder: shards-000000.tar, ... and manifest.json (a rerun goes on after the
    complete shards it finds there)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """The source as fields, when src is unset (e.g. source.type=huggingface
    source.path=/data/hf source.split=validation)."""
    shard_size: int = 1000
    """Good samples per shard (the last shard holds the rest)."""
    prefix: str = "shards"
    """Shard name prefix."""
    quality: int = 95
    """JPEG quality of the images that are encoded (not JPEG / PNG, or re-encoded)."""
    reencode: bool = False
    """Re-encode every image as JPEG (by default JPEG and PNG are stored as they are)."""
    max_side: int | None = None
    """Downscale images whose longer side is larger to this many pixels (re-encodes them)."""
    processes: int = 1
    """Processes reading and encoding samples."""
    role: Role = Role.train
    """The split role the source reads (its default split)."""
    image_size: int = 224
    """Image size of the embedded scenes."""
    max_skipped_fraction: float = 0.1
    """Exit with status 1 when more than this fraction of the samples read were skipped as bad
    (the shards and manifest are written all the same)."""
    layout: ShardLayout = ShardLayout.flava
    """flava (our shards, read with `type: webdataset`) or clip_benchmark (a CLIP_benchmark
    `wds/` dataset: `--dataset wds/NAME --dataset_root DST`)."""
    clip_benchmark: ClipBenchmarkOptions = field(default_factory=ClipBenchmarkOptions)
    """layout=clip_benchmark: split, task, class names and templates."""


DST_UNSET = "dst is not set: give the output folder, e.g. dst=/data/shards/mine"


def validate_write_shards(cfg: WriteShardsConfig) -> None:
    """Value checks of the write_shards command (the source itself is checked when opened)."""
    given(cfg.dst, DST_UNSET)
    fields = set(set_fields(cfg.source))
    embedded = cfg.src == "embedded" and "type" not in fields  # with its size / seed
    if (cfg.src is None and not fields) or (cfg.src is not None and fields and not embedded):
        raise ConfigError(
            "give the source once: src=PATH (a data folder, a source YAML / JSON, or embedded) "
            f"or source.* fields (source.type=... source.path=...); got src={cfg.src!r} and "
            f"source fields {sorted(fields)}"
        )
    checks: list[Check] = [
        (cfg.shard_size >= 1, "shard_size", "must be >= 1"),
        (1 <= cfg.quality <= 100, "quality", "must be in [1, 100]"),
        (cfg.max_side is None or cfg.max_side >= 1, "max_side", "must be >= 1 or null"),
        (cfg.processes >= 1, "processes", "must be >= 1"),
        (cfg.image_size >= 1, "image_size", "must be >= 1"),
        (0 <= cfg.max_skipped_fraction <= 1, "max_skipped_fraction", "must be in [0, 1]"),
        (
            bool(cfg.clip_benchmark.split) and "/" not in cfg.clip_benchmark.split,
            "clip_benchmark.split",
            "must be a folder name (e.g. test)",
        ),
        *prompt_checks(cfg.clip_benchmark, "clip_benchmark"),
    ]
    fail_checks(cfg, checks)


_KEYS = {f.name: f for f in dataclasses.fields(WriteShardsConfig)}
_SOURCE_KEYS = {f.name for f in dataclasses.fields(SourceConfig)}


def _flag(word: str, rest: list[str]) -> str:
    """The `key=value` of one old flag (`--shard-size 5`, `--shard-size=5`, `--reencode`);
    its value, if separate, is taken from the front of `rest`."""
    name, eq, value = word[2:].partition("=")
    key = name.replace("-", "_")
    if (
        not word.startswith("--")
        or key not in _KEYS
        or key in ("src", "dst", "source", "clip_benchmark")
    ):
        raise ConfigError(f"unknown option {word!r}; the keys are listed by --help (key=value)")
    if _KEYS[key].type in (bool, "bool") and not eq:
        return f"{key}=true"
    if not eq:
        if not rest or rest[0].startswith("--"):
            raise ConfigError(f"option {word} needs a value, e.g. {key}=...")
        value = rest.pop(0)
    return f"{key}={value}"


def from_old_form(argv: list[str]) -> list[str]:
    """`argv` as the loader's `key=value` list: the older form's flags (`--shard-size 5000`) as
    their keys, source fields (`type=huggingface path=/data/hf`) as source.*, and the paths
    without `=` as src and dst (`SRC DST`, or `DST` after source fields)."""
    out, paths, rest = [], [], list(argv)
    while rest:
        word = rest.pop(0)
        if word.startswith("-"):
            out.append(_flag(word, rest))
        elif "=" not in word:
            paths.append(word)
        else:
            key = word.split("=", 1)[0]
            out.append(f"source.{word}" if key in _SOURCE_KEYS else word)
    if len(paths) > 2:
        raise ConfigError(f"give at most two paths (SRC DST), got {len(paths)}: {paths}")
    keys = ("src", "dst")[2 - len(paths) :]  # one path: DST
    return [*(f"{k}={p}" for k, p in zip(keys, paths, strict=True)), *out]
