"""Typed schema of `python -m flava.filter`: an embedding folder of image-text pairs -> the
pairs kept (new webdataset shards) and a report; its checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from flava.config.checks import Check, fail_checks
from flava.config.common import SourceConfig


@dataclass
class FilterOptions:
    """What is dropped, and how the kept pairs are written."""

    min_score: float | None = None
    """Drop pairs whose image-text cosine is below this (`low_score`); null: no floor."""
    keep_fraction: float | None = None
    """Keep this fraction of the pairs left after the other reasons, the highest scores first
    (ties: the lowest key); the rest are `low_score`. null: keep all that pass min_score."""
    duplicate_threshold: float | None = 0.98
    """Images whose cosine is at least this are near-duplicates: of each group (connected by
    such pairs) the record with the lowest key is kept, the others are `near_duplicate`. null:
    no deduplication."""
    eval_threshold: float = 0.98
    """An image whose cosine to any image of `eval_sets` is at least this is `eval_copy`."""
    index: str | None = None
    """An index folder built by flava.index over this embedding folder alone, index.field=image
    (hnsw or ivf): its range search finds the near-duplicates instead of exact search (for
    millions of pairs; it may miss some: docs/collection.md). null: exact search (faiss flat)."""
    examples: int = 5
    """Examples of each reason in report.json (drawn with `seed`)."""
    seed: int = 0
    """Seed of the examples drawn (the decisions themselves involve no randomness)."""
    shard_size: int = 1000
    """Kept pairs per output shard."""
    prefix: str = "filtered"
    """Output shards: <prefix>-000000.tar, ..."""


@dataclass
class FilterRunConfig:
    """`python -m flava.filter`."""

    embeddings: str | None = None
    """An embedding folder of pairs written by flava.embed (embed.modality=pair or auto over a
    source of images and texts); its source is read again to write the kept pairs."""
    out: str | None = None
    """Output folder: the shards, report.json, scores.png, decisions.parquet. New or empty, or
    one an interrupted run of the same settings left (it goes on from there)."""
    eval_sets: list[SourceConfig] = field(default_factory=list)
    """Evaluation sets to decontaminate against, any source (same fields as data.source); their
    images are embedded with the collection's model into out/eval_embeddings/N."""
    device: str = "auto"
    """Where the evaluation sets are embedded: auto, cpu, cuda, ..."""
    batch_size: int = 64
    """Images per encoder batch when embedding the evaluation sets."""
    filter: FilterOptions = field(default_factory=FilterOptions)


def _unit_interval(value: float | None) -> bool:
    return value is None or -1.0 <= value <= 1.0


def validate_filter(cfg: FilterRunConfig) -> None:
    """Value checks of the filter command (the folders and sources are checked when opened)."""
    f = cfg.filter
    checks: list[Check] = [
        (bool(cfg.embeddings), "embeddings", "give the embedding folder: embeddings=DIR"),
        (cfg.out is not None and str(cfg.out) != "", "out", "give the output folder: out=DIR"),
        (_unit_interval(f.min_score), "filter.min_score", "must be a cosine in [-1, 1]"),
        (
            f.keep_fraction is None or 0 < f.keep_fraction <= 1,
            "filter.keep_fraction",
            "must be in (0, 1]",
        ),
        (_unit_interval(f.duplicate_threshold), "filter.duplicate_threshold", "must be in [-1, 1]"),
        (_unit_interval(f.eval_threshold), "filter.eval_threshold", "must be in [-1, 1]"),
        (f.examples >= 0, "filter.examples", "must be >= 0"),
        (f.shard_size >= 1, "filter.shard_size", "must be >= 1"),
        (cfg.batch_size >= 1, "batch_size", "must be >= 1"),
    ]
    fail_checks(cfg, checks)
