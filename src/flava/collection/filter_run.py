"""The run of `python -m flava.filter`, across processes like flava.embed: search, decide
(`flava.collection.filter`), write the kept pairs as webdataset shards that pretraining reads,
and the report.

Under torchrun every process takes part in embedding the evaluation sets (flava.embed's run, into
out/eval_embeddings/N, image only, with the collection's model, precision and normalisation, so
their vectors and the collection's compare like for like) and in the similarity searches
(`flava.collection.similarity`): the searches are cut into units, one per shard of the embedding
folder, and rank r of W searches every W-th unit not done yet, writing what it found
(each row's nearest evaluation image, the duplicate links from its rows) to
out/matches/shard-N.npz under a temporary name renamed when complete. When every process is
done, the process group ends and rank 0 alone reads every unit's matches, decides, writes the
kept shards, decisions.parquet, scores.png and report.json. The kept pairs are read again from
the source the collection was embedded from (the manifest names it), shard by shard, matched to
their rows by (shard, key), and written by `flava.data.write_shards`'s shard writer: original
JPEG / PNG bytes, captions and labels as members, keys numbered in order, with its
manifest.json. A record the embedding run skipped is counted as bad (per reason), as is one that
cannot be read again.

Resume: out/filter.json holds the settings (the embedding folder and what made it, the evaluation
sets, every filter option) and `complete`. A rerun of the same command continues: the units
whose matches are written are not searched again (at any process count), the evaluation
embeddings resume as flava.embed does, and the leading output shards that manifest.json lists
and that hold their samples are kept (the rest are written again, the same bytes). A rerun with
other settings stops with one line naming the first that differs; a rerun of a finished run
(`complete: true`) does nothing and returns its report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from flava.collection import layout, similarity
from flava.collection.filter import (
    KEPT,
    REASONS,
    Matches,
    Pairs,
    decide,
    load_images,
    load_pairs,
)
from flava.collection.filter_report import decisions_table, examples, histogram
from flava.collection.units import Units, read_or_skip
from flava.collection.vectors import Collection
from flava.config import ConfigError
from flava.config.filter import FilterOptions, FilterRunConfig
from flava.config.loader import from_fields
from flava.data.sources import SAMPLE_ERRORS, SkipLog, build, check_fields
from flava.data.tar_samples import Prepared, sample_files
from flava.data.write_shards import MANIFEST, count_samples, fill_shards, set_totals

log = logging.getLogger("flava")
REPORT, HISTOGRAM, DECISIONS = "report.json", "scores.png", "decisions.parquet"
STATE, MATCHES, FORMAT = "filter.json", "matches", "flava-filter"


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


def settings_of(cfg: FilterRunConfig, folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must find unchanged (as filter.json holds it), in the order the
    first difference is named."""
    from flava.collection.embed_run import source_fields

    f = cfg.filter
    settings: dict[str, Any] = {
        "embeddings": str(folder.resolve()),
        "embedding": {
            "model": manifest["settings"]["model"]["tag"],
            "rows": manifest["rows"],
            "shards": [s["name"] for s in manifest["shards"]],
        },
        "eval_sets": [source_fields(e) for e in cfg.eval_sets],
    }
    settings |= {f"filter.{k}": getattr(f, k) for k in f.__dataclass_fields__}
    return json.loads(json.dumps(settings, default=str))


def open_out(out: Path, settings: dict[str, Any]) -> bool:
    """Create `out` and its filter.json, or check the settings an earlier run left there
    (one line naming the first that differs); whether that run finished."""
    state = out / STATE
    if not state.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"out={out} is not empty and holds no {STATE}; give a new folder")
        out.mkdir(parents=True, exist_ok=True)
        layout.write_json(state, {"format": FORMAT, "settings": settings, "complete": False})
        return False
    try:
        old = json.loads(state.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{state}: not valid JSON ({exc}); give a new folder") from None
    for key in settings:
        if old.get("settings", {}).get(key) != settings[key]:
            raise ConfigError(
                f"out={out} holds a filter run with other settings ({key}: "
                f"{json.dumps(old['settings'].get(key))[:120]} there, "
                f"{json.dumps(settings[key])[:120]} now); give another out, or delete the "
                "folder to start again"
            )
    return bool(old.get("complete")) and (out / REPORT).is_file()


def duplicate_index(cfg: FilterRunConfig, folder: Path) -> Any | None:
    """The index filter.index names (checked to hold this folder's image embeddings, row i
    as id i), None when it names none or no duplicates are searched; one line otherwise."""
    from flava.collection.index_run import read_index

    f = cfg.filter
    if f.index is None or f.duplicate_threshold is None:
        return None
    index, info = read_index(f.index)
    given = [s.ident() for s in Collection.open([folder], "image").shards]
    if info.get("field") != "image" or [s["ident"] for s in info["shards"]] != given:
        raise ConfigError(
            f"filter.index={f.index} does not index the image embeddings of {folder} alone, "
            f"in order; build it with python -m flava.index 'embeddings=[{folder}]' "
            "index.field=image"
        )
    return index


def _matches_path(out: Path, name: str) -> Path:
    return out / MATCHES / f"{name}.npz"


def save_matches(path: Path, score: np.ndarray, match: np.ndarray, links: np.ndarray) -> None:
    """One unit's matches, written under a temporary name and renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, eval_score=score, eval_match=match, links=links)
    os.replace(tmp, path)


def search_units(
    cfg: FilterRunConfig, folder: Path, manifest: dict[str, Any], out: Path, evals: np.ndarray
) -> int:
    """Search this process's units not done yet (see the module doc); how many it searched."""
    from flava.collection.units import mine
    from flava.tasks.retrieval import process_count_and_rank

    names = [s["name"] for s in manifest["shards"]]
    starts = np.cumsum([0] + [int(s["rows"]) for s in manifest["shards"]])
    done = [u for u, name in enumerate(names) if _matches_path(out, name).is_file()]
    todo = mine(len(names), done, *process_count_and_rank())
    if not todo:
        return 0
    images = load_images(folder, manifest)
    index = duplicate_index(cfg, folder)
    threshold = cfg.filter.duplicate_threshold
    for unit in todo:
        start, stop = int(starts[unit]), int(starts[unit + 1])
        score, match = similarity.nearest_eval(images[start:stop], evals)
        links = np.empty((0, 2), np.int64)
        if threshold is not None and index is None:
            links = similarity.exact_links(images, start, stop, threshold)
        elif threshold is not None:
            links = similarity.index_links(images, start, stop, threshold, index)
        save_matches(_matches_path(out, names[unit]), score, match, links)
    return len(todo)


def read_matches(out: Path, manifest: dict[str, Any]) -> Matches:
    """Every unit's matches, in row order."""
    scores, found, links = [], [], [np.empty((0, 2), np.int64)]
    for shard in manifest["shards"]:
        with np.load(_matches_path(out, shard["name"])) as part:
            scores.append(part["eval_score"])
            found.append(part["eval_match"])
            links.append(part["links"])
    cat = np.concatenate
    return Matches(cat(scores or [np.empty(0)]), cat(found or [np.empty(0, np.int64)]), cat(links))


def _kept_samples(
    units: Units, pairs: Pairs, kept: np.ndarray, skips: SkipLog, start: int, number: int
) -> Generator[Prepared]:
    """The kept pairs from the `start`-th on as tar members, in the collection's order, each
    numbered by its place among the kept pairs, their keys from `number`; unreadable ones
    counted in `skips` (those before the `start`-th kept pair are passed over uncounted)."""
    positions: dict[int, dict[str, int]] = {}
    for place, i in enumerate(np.flatnonzero(kept).tolist()):
        positions.setdefault(int(pairs.units[i]), {}).setdefault(pairs.keys[i], place)
    for unit in sorted(positions):
        wanted = positions[unit]
        if max(wanted.values()) < start:
            continue  # written before
        counted = skips if min(wanted.values()) >= start else SkipLog()
        for where, read in units.records(unit, counted):
            sample = read_or_skip(read, where, counted)
            if sample is None or sample.key not in wanted:
                continue
            place = wanted.pop(sample.key)  # a key met twice in a shard: the first only
            if place < start:
                continue
            counted = skips
            try:
                files = sample_files(sample, f"{number:09d}", 95, False, None)
            except SAMPLE_ERRORS as exc:
                skips.add(exc, where)
                continue
            yield Prepared(place, files, {}, {})
            number += 1


def _written_before(out: Path) -> list[dict[str, Any]]:
    """The leading shards an earlier run of the same settings listed that hold their samples."""
    path = out / MANIFEST
    if not path.is_file():
        return []
    kept = []
    for entry in json.loads(path.read_text()).get("shards", []):
        if count_samples(out / entry["name"]) != entry["samples"]:
            break  # this one and the ones after it are written again (the same, in order)
        kept.append(entry)
    return kept


def _save_written(
    manifest: dict[str, Any], shards: list[dict[str, Any]], total: int, out: Path, size: int
) -> dict[str, Any]:
    """Write out/manifest.json for the shards written so far; what it holds."""
    written: dict[str, Any] = {
        "format": "webdataset",
        "source": f"flava.filter of {manifest['settings']['source']}",
        "shard_size": size,
        "images": "original JPEG/PNG, else JPEG",
    }
    set_totals(written, shards, total)
    written["complete"] = written["num_samples"] == total
    layout.write_json(out / MANIFEST, written)
    return written


def write_kept(
    manifest: dict[str, Any], pairs: Pairs, kept: np.ndarray, out: Path, options: FilterOptions
) -> tuple[dict[str, Any], dict[str, int]]:
    """Write the kept pairs into `out`'s shards and manifest.json (after each shard), going on
    after the shards an earlier run wrote; (that manifest, the bad records met while reading
    them again)."""
    units, skips, total = reopen_source(manifest), SkipLog(), int(kept.sum())
    shards = _written_before(out)
    start = shards[-1]["stop"] if shards else 0
    number = sum(s["samples"] for s in shards)

    def record(entry: dict[str, Any]) -> None:
        entry["bad_records"] = skips.take()  # those read since the shard before
        shards.append(entry)
        _save_written(manifest, shards, total, out, options.shard_size)

    samples = _kept_samples(units, pairs, kept, skips, start, number)
    with contextlib.closing(samples):
        fill_shards(samples, out, options.prefix, len(shards), options.shard_size, record)
    bad: dict[str, int] = dict(skips.take())
    for entry in shards:
        for reason, n in entry.get("bad_records", {}).items():
            bad[reason] = bad.get(reason, 0) + n
    written = _save_written(manifest, shards, total, out, options.shard_size)
    return written, dict(sorted(bad.items()))


def filter_collection(cfg: FilterRunConfig) -> dict[str, Any]:
    """Filter per `cfg` (a `FilterRunConfig`; under torchrun: in every process); the report
    (rank 0's; the others return {"rank": r, "units_searched": n})."""
    from flava.collection.embed_run import on_rank_zero
    from flava.tasks.retrieval import process_count_and_rank
    from flava.tasks.run import processes, rank_zero_value, resolve_device

    out = Path(str(cfg.out)).expanduser()
    with processes(resolve_device(cfg.device)):
        rank = process_count_and_rank()[1]
        folder, manifest = open_pairs(str(cfg.embeddings))
        settings = settings_of(cfg, folder, manifest)
        finished = on_rank_zero(lambda: _opened(cfg, folder, out, settings))
        if not finished:
            evals = embed_eval_sets(cfg, manifest, out)
            searched = search_units(cfg, folder, manifest, out, evals)
            rank_zero_value(None)  # every process has written its units' matches
    if rank != 0:
        return {"rank": rank, "units_searched": 0 if finished else searched}
    if finished:
        log.info("%s holds a finished filter run of the same settings: nothing to do", out)
        report = json.loads((out / REPORT).read_text())
    else:
        report = _decide_and_write(cfg, folder, manifest, out, len(evals))
    _print_summary(report, out)
    return report


def _opened(cfg: FilterRunConfig, folder: Path, out: Path, settings: dict[str, Any]) -> bool:
    """`open_out`, and filter.index checked before any process searches."""
    finished = open_out(out, settings)
    if not finished:
        duplicate_index(cfg, folder)
    return finished


def _decide_and_write(
    cfg: FilterRunConfig, folder: Path, manifest: dict[str, Any], out: Path, eval_images: int
) -> dict[str, Any]:
    """Rank 0's part: decide from every unit's matches, write the kept shards, the report."""
    pairs = load_pairs(folder, manifest)
    d = decide(pairs, read_matches(out, manifest), cfg.filter)
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
        "bad_records": {"at_embedding": manifest["skipped"], "at_writing": reread},
        "eval_images": eval_images,
        "settings": {k: getattr(f, k) for k in f.__dataclass_fields__},
        "lowest_kept_score": d.score_floor,
        "shards": [s["name"] for s in written["shards"]],
        "examples": examples(pairs, d, f.examples, f.seed),
    }
    histogram(pairs.scores, d.reason, d.score_floor, out / HISTOGRAM)
    decisions_table(pairs, d, out / DECISIONS)
    layout.write_json(out / REPORT, report)
    state = json.loads((out / STATE).read_text())
    layout.write_json(out / STATE, {**state, "complete": True})
    return report


def _print_summary(report: dict[str, Any], out: Path) -> None:
    from flava.tasks.run import print_table

    summary = {"pairs": report["pairs"], **report["dropped"], "kept": report["kept"]}
    summary["written"] = report["written"]
    print_table(f"filter -> {out}", summary)
