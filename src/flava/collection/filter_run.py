"""The run of `python -m flava.filter`: decide (`flava.collection.filter`), write the kept pairs
as webdataset shards that pretraining reads, and the report.

The evaluation sets (any sources) are embedded with the collection's own model, precision and
normalisation by `flava.embed`'s run into out/eval_embeddings/N (image only), so their vectors
and the collection's compare like for like. The kept pairs are read again from the source the
collection was embedded from (the manifest names it), shard by shard, matched to their rows by
(shard, key), and written by `flava.data.write_shards`'s shard writer: original JPEG / PNG
bytes, captions and labels as members, keys numbered in order, with its manifest.json. A record
the embedding run skipped is counted as bad (per reason), as is one that cannot be read again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from flava.collection import layout
from flava.collection.filter import KEPT, REASONS, Decisions, Pairs, decide, load_pairs
from flava.collection.units import Units, read_or_skip
from flava.collection.vectors import Collection
from flava.config import ConfigError
from flava.config.filter import FilterOptions, FilterRunConfig
from flava.config.loader import from_fields
from flava.data.sources import SAMPLE_ERRORS, SkipLog, build, check_fields
from flava.data.tar_samples import Prepared, sample_files
from flava.data.write_shards import MANIFEST, fill_shards, set_totals

log = logging.getLogger("flava")
REPORT, HISTOGRAM, DECISIONS = "report.json", "scores.png", "decisions.parquet"


def open_pairs(embeddings: str) -> tuple[Path, dict[str, Any]]:
    """The embedding folder and its manifest; one line unless it holds image and text."""
    folder, manifest = layout.embedding_folder(embeddings)
    if set(manifest["fields"]) != {"image", "text"}:
        raise ConfigError(
            f"embeddings={embeddings} holds {manifest['fields']} embeddings; the filter scores "
            "pairs: embed a source of images and captions with embed.modality=pair"
        )
    return folder, manifest


def embed_eval_sets(cfg: FilterRunConfig, manifest: dict[str, Any], out: Path) -> np.ndarray:
    """Image embeddings [M, P] of every evaluation set, by the collection's model."""
    from flava.collection.embed_run import embed_collection
    from flava.config.common import ModelConfig, SourceDataConfig
    from flava.config.embed import EmbedOptions, EmbedPrecision, EmbedRunConfig, Modality, Runtime

    s = manifest["settings"]
    folders: list[str | Path] = []
    for i, entry in enumerate(cfg.eval_sets):
        model = ModelConfig(pretrained_model_key=s["model"]["pretrained_model_key"])
        if s["model"]["preset"]:
            model.preset = s["model"]["preset"]
        options = EmbedOptions(
            modality=Modality.image, normalize=s["normalized"],
            precision=EmbedPrecision(s["precision"]), batch_size=cfg.batch_size,
            device=cfg.device, seed=s["model"]["seed"], progress=False,
        )  # fmt: skip
        if "runtime" in s:  # embedded on onnxruntime: the same export
            options.runtime, options.onnx_dir = Runtime.onnx, s["runtime"]["onnx_dir"]
        data = SourceDataConfig(source=entry, text_max_length=s["text_max_length"])
        folder = out / "eval_embeddings" / str(i)
        try:
            embed_collection(EmbedRunConfig(str(folder), model, data, options))
        except ConfigError as exc:
            raise type(exc)(f"eval_sets[{i}]: {exc}") from None
        folders.append(folder)
    if not folders:
        return np.empty((0, int(manifest["dim"])), np.float32)
    collection = Collection.open(folders, "image")
    return np.concatenate([x for _, x in collection.batches()] or [np.empty((0, collection.dim))])


def reopen_source(manifest: dict[str, Any]) -> Units:
    """The units of the source the collection was embedded from, as flava.embed cut them."""
    from flava.config.common import SourceConfig

    s = manifest["settings"]
    entry = from_fields(SourceConfig, s["source"])
    check_fields(entry, "the embedding's source")
    try:
        source = build(entry, "train", 224)
    except ConfigError as exc:
        raise type(exc)(f"the source the embeddings were made from: {exc}") from None
    return Units.of(source, int(s.get("shard_size") or 1))


def _kept_samples(
    units: Units, pairs: Pairs, kept: np.ndarray, skips: SkipLog
) -> Generator[Prepared]:
    """The kept pairs as tar members, in the collection's order; unreadable ones counted."""
    wanted: dict[int, set[str]] = {}
    for i in np.flatnonzero(kept):
        wanted.setdefault(int(pairs.units[i]), set()).add(pairs.keys[i])
    number = 0
    for unit in sorted(wanted):
        for where, read in units.records(unit, skips):
            sample = read_or_skip(read, where, skips)
            if sample is None or sample.key not in wanted[unit]:
                continue
            wanted[unit].discard(sample.key)  # a key met twice in a shard: the first only
            try:
                files = sample_files(sample, f"{number:09d}", 95, False, None)
            except SAMPLE_ERRORS as exc:
                skips.add(exc, where)
                continue
            yield Prepared(number, files, {}, {})
            number += 1


def write_kept(
    manifest: dict[str, Any], pairs: Pairs, kept: np.ndarray, out: Path, options: FilterOptions
) -> tuple[dict[str, Any], dict[str, int]]:
    """Write the kept pairs into `out`'s shards and manifest.json; (that manifest, the skips
    met while reading them again)."""
    units, skips = reopen_source(manifest), SkipLog()
    shards: list[dict[str, Any]] = []
    total = int(kept.sum())
    with contextlib.closing(_kept_samples(units, pairs, kept, skips)) as samples:
        fill_shards(samples, out, options.prefix, 0, options.shard_size, shards.append)
    written: dict[str, Any] = {
        "format": "webdataset",
        "source": f"flava.filter of {manifest['settings']['source']}",
        "shard_size": options.shard_size,
        "images": "original JPEG/PNG, else JPEG",
    }
    set_totals(written, shards, total)
    written["complete"] = written["num_samples"] == total
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(written, indent=2))
    os.replace(tmp, out / MANIFEST)
    return written, dict(skips.counts)


def examples(pairs: Pairs, d: Decisions, count: int, seed: int) -> dict[str, list[dict]]:
    """Up to `count` rows of each decision, drawn with `seed`, with what each points at."""
    rng, out = random.Random(seed), {}
    for reason in (*REASONS, KEPT):
        rows = np.flatnonzero(d.reason == reason).tolist()
        picked = sorted(rng.sample(rows, min(count, len(rows))))
        out[reason] = [_example(pairs, d, i) for i in picked]
    return out


def _example(pairs: Pairs, d: Decisions, i: int) -> dict[str, Any]:
    """One row as the report shows it."""
    row: dict[str, Any] = {
        "key": pairs.keys[i],
        "shard": layout.shard_name(int(pairs.units[i])),
        "path": pairs.paths[i],
        "caption": pairs.captions[i],
        "score": round(float(pairs.scores[i]), 4),
    }
    if d.duplicate_of[i] >= 0:
        j = int(d.duplicate_of[i])
        cos = float(pairs.image[i] @ pairs.image[j])
        row["duplicate_of"] = {"key": pairs.keys[j], "caption": pairs.captions[j], "cosine": cos}
    if d.eval_match[i] >= 0:
        row["eval_image"] = {"number": int(d.eval_match[i]), "cosine": float(d.eval_score[i])}
    return row


def histogram(scores: np.ndarray, reason: np.ndarray, floor: float | None, path: Path) -> None:
    """The image-text scores, kept and dropped stacked, the lowest kept score marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    groups = [(r, scores[reason == r]) for r in (KEPT, *REASONS)]
    groups = [(r, s) for r, s in groups if len(s)]
    if groups:
        ax.hist([s for _, s in groups], bins=50, stacked=True, label=[r for r, _ in groups])
        ax.legend()
    if floor is not None:
        ax.axvline(floor, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("image-text cosine")
    ax.set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def decisions_table(pairs: Pairs, d: Decisions, path: Path) -> None:
    """Every row's decision as parquet: key, shard, score, reason, the key it duplicates."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dup = [pairs.keys[j] if j >= 0 else None for j in d.duplicate_of]
    table = pa.table({
        "key": pairs.keys,
        "shard": [layout.shard_name(int(u)) for u in pairs.units],
        "score": pairs.scores.astype(np.float32),
        "reason": [str(r) for r in d.reason],
        "duplicate_of": pa.array(dup, pa.string()),
        "eval_cosine": np.where(np.isfinite(d.eval_score), d.eval_score, np.nan),
    })  # fmt: skip
    pq.write_table(table, path)


def open_out(out: Path) -> None:
    """Create `out`; one line when it already holds something."""
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"out={out} is not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)


def filter_collection(cfg: FilterRunConfig) -> dict[str, Any]:
    """Filter per `cfg` (a `FilterRunConfig`); the report written to out/report.json."""
    from flava.tasks.run import print_table

    folder, manifest = open_pairs(str(cfg.embeddings))
    out = Path(str(cfg.out)).expanduser()
    open_out(out)
    pairs = load_pairs(folder, manifest)
    eval_images = embed_eval_sets(cfg, manifest, out)
    d = decide(pairs, eval_images, cfg.filter)
    written, reread = write_kept(manifest, pairs, d.reason == KEPT, out, cfg.filter)
    counts = d.counts()
    f = cfg.filter
    report = {
        "embeddings": str(folder),
        "pairs": len(pairs.keys),
        "records_read": manifest["records_read"],
        "dropped": {r: counts[r] for r in REASONS},
        "kept": counts[KEPT],
        "written": written["num_samples"],
        "bad_records": {
            "at_embedding": manifest["skipped"],
            "at_writing": dict(sorted(reread.items())),
        },
        "eval_images": len(eval_images),
        "settings": {k: getattr(f, k) for k in f.__dataclass_fields__},
        "lowest_kept_score": d.score_floor,
        "shards": [s["name"] for s in written["shards"]],
        "examples": examples(pairs, d, f.examples, f.seed),
    }
    layout.write_json(out / REPORT, report)
    histogram(pairs.scores, d.reason, d.score_floor, out / HISTOGRAM)
    decisions_table(pairs, d, out / DECISIONS)
    summary = {"pairs": report["pairs"], **report["dropped"], "kept": report["kept"]}
    summary["written"] = report["written"]
    print_table(f"filter -> {out}", summary)
    return report
