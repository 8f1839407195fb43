"""The run of `python -m flava.embed`: open the source and the output folder, embed this
process's units (`flava.collection.embedding`), write the manifest.

The manifest (`layout.MANIFEST`) is written twice: by rank 0 before any unit, holding the
settings that make the embeddings what they are (model, source, modality, normalisation,
precision, text length, and the source's shards or record count), `complete: false`; and after
every process has finished, with the shards, their counts and `complete: true`. A rerun into a
folder whose manifest names other settings stops with one line naming the first that differs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from flava.collection import layout
from flava.collection.embedding import MODALITY_FIELDS, held_kinds, modality_of, run_units
from flava.collection.encoder import Encoder, OnnxEncoder, load_model, resolve_precision
from flava.collection.units import Units
from flava.config import ConfigError, SourceConfig
from flava.config.embed import EmbedRunConfig
from flava.data.sources import (
    DataError,
    IndexedSource,
    StreamingSource,
    build,
    check_fields,
    set_fields,
    too_many_skipped,
)
from flava.data.sources.skips import skip_metrics
from flava.tasks.retrieval import process_count_and_rank
from flava.tasks.run import model_tag, print_table, processes, rank_zero_value, resolve_device

log = logging.getLogger("flava")


def embed_collection(cfg: EmbedRunConfig) -> dict[str, Any]:
    """Embed per `cfg` (an `EmbedRunConfig`; under torchrun: in every process); returns the
    summary rank 0 printed (shards, rows, records read, skips)."""
    with processes(resolve_device(cfg.embed.device)) as device:
        return _embed(cfg, device)


def _open_source(cfg: EmbedRunConfig, image_size: int) -> IndexedSource | StreamingSource:
    """The source of data.source, for reading whole; a failure names data.source."""
    entry = cfg.data.source
    check_fields(entry, "data.source")
    try:
        return build(entry, "train", image_size)
    except ConfigError as exc:
        raise type(exc)(f"data.source ({entry.type}): {exc}") from None


def source_fields(source: SourceConfig) -> dict[str, Any]:
    """The source's type and the fields it sets (those left at their defaults are not kept)."""
    values = dataclasses.asdict(source)
    return {k: values[k] for k in ["type", *set_fields(source)] if k in values}


def settings_of(cfg: EmbedRunConfig, units: Units, modality: str, precision: str) -> dict[str, Any]:
    """What a resumed run must find unchanged (as the manifest's JSON holds it)."""
    m = cfg.model
    settings = {
        "model": {
            "pretrained_model_key": m.pretrained_model_key,
            "preset": None if m.pretrained_model_key else m.preset,
            "seed": cfg.embed.seed,
            "tag": model_tag(m, cfg.embed.seed),
        },
        "source": source_fields(cfg.data.source),
        "modality": modality,
        "normalized": bool(cfg.embed.normalize),
        "precision": precision,
        "text_max_length": cfg.data.text_max_length,
        **units.identity(),
    }
    if str(cfg.embed.runtime) == "onnx":  # absent for PyTorch: older folders resume
        settings["runtime"] = {"onnx_dir": str(Path(str(cfg.embed.onnx_dir)).expanduser())}
    return json.loads(json.dumps(settings, default=str))


def open_folder(out: Path, settings: dict[str, Any], count: int) -> list[int]:
    """The units already written in `out` (creating it and its manifest when new); one line
    when it holds something else or embeddings made with other settings."""
    manifest = layout.read_manifest(out) if out.is_dir() else None
    if manifest is None:
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(
                f"out={out} is not empty and holds no manifest.json; give a new folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        head = {"format": layout.FORMAT, "version": layout.VERSION, "units": count}
        layout.write_json(out / layout.MANIFEST, {**head, "settings": settings, "complete": False})
        return []
    old = manifest.get("settings", {})
    for key in settings:
        if old.get(key) != settings[key]:
            raise ConfigError(
                f"out={out} holds embeddings made with other settings ({key}: "
                f"{json.dumps(old.get(key))[:120]} there, {json.dumps(settings[key])[:120]} now); "
                "give another out, or delete the folder to start again"
            )
    return layout.written_units(out)


def on_rank_zero(fn: Any) -> Any:
    """`fn()` on rank 0, its value (or its one-line ConfigError) on every process."""
    state: dict[str, Any] | None = None
    if process_count_and_rank()[1] == 0:
        try:
            state = {"value": fn()}
        except ConfigError as exc:
            state = {"error": str(exc)}
    state = rank_zero_value(state)
    if "error" in state:
        raise ConfigError(state["error"])
    return state["value"]


def _embed(cfg: EmbedRunConfig, device: torch.device) -> dict[str, Any]:
    """The run on `device` (see the module doc)."""
    m, e = cfg.model, cfg.embed
    model = None
    if cfg.data.source.type == "embedded":  # scenes are drawn at the model's image size
        model = load_model(m.pretrained_model_key, m.preset, e.seed)
    source = _open_source(cfg, model.config.image.image_size if model is not None else 224)
    modality = modality_of(str(e.modality), held_kinds(source))
    onnx = str(e.runtime) == "onnx"
    precision = "fp32" if onnx else resolve_precision(str(e.precision), device)
    units = Units.of(source, e.shard_size)
    out = Path(str(cfg.out)).expanduser()
    settings = settings_of(cfg, units, modality, precision)
    done = on_rank_zero(lambda: open_folder(out, settings, units.count))
    if onnx:
        encoder: Encoder = OnnxEncoder(str(e.onnx_dir), cfg.data.text_max_length, e.normalize)
    else:
        if model is None:
            model = load_model(m.pretrained_model_key, m.preset, e.seed)
        encoder = Encoder(
            model, device, precision, cfg.data.text_max_length, e.normalize, e.compile
        )
    if process_count_and_rank()[1] == 0:
        log.info(
            "embedding %s (%s, %d shards, %d written) with %s in %s",
            source.describe(),
            modality,
            units.count,
            len(done),
            m.pretrained_model_key or m.preset,
            f"{precision} on onnxruntime" if onnx else precision,
        )
    seconds = run_units(encoder, units, done, out, e, modality)
    rank_zero_value(None)  # every process has written its shards
    summary = on_rank_zero(lambda: finish(out, settings, units.count, encoder.dim))
    summary["seconds"] = round(seconds, 1)
    print_table(f"embeddings -> {out}", summary)
    reason = too_many_skipped(
        summary["skipped"], summary["records_read"], cfg.data.max_skipped_fraction, "records"
    )
    if reason is not None:
        raise DataError(f"{reason}; fix the data or raise data.max_skipped_fraction")
    return summary


def finish(out: Path, settings: dict[str, Any], count: int, dim: int) -> dict[str, Any]:
    """Write the manifest from every shard's counts; the run's summary."""
    shards: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for unit in layout.written_units(out):
        stats = layout.shard_stats(out, layout.shard_name(unit))
        shards.append({"name": layout.shard_name(unit), **stats})
        for reason, n in stats.get("skipped", {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    rows = sum(s["rows"] for s in shards)
    read = sum(s["records_read"] for s in shards)
    manifest = {
        "format": layout.FORMAT,
        "version": layout.VERSION,
        "settings": settings,
        "complete": len(shards) == count,
        "units": count,
        "fields": list(MODALITY_FIELDS[settings["modality"]]),
        "dim": dim,
        "dtype": "float16",
        "rows": rows,
        "records_read": read,
        "skipped": dict(sorted(skipped.items())),
        "shards": shards,
    }
    layout.write_json(out / layout.MANIFEST, manifest)
    return {
        "shards": len(shards),
        "rows": rows,
        **skip_metrics(skipped, read),
        "skipped": skipped,
        "records_read": read,
    }
