"""Typed schema of `python -m flava.index`: embedding shards -> a faiss index; its checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from flava.config.checks import Check, Choice, ConfigError, fail_checks


class IndexKind(Choice):
    """The faiss index built."""

    auto = "auto"
    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


class IndexField(Choice):
    """Which embeddings of the shards are indexed."""

    auto = "auto"
    image = "image"
    text = "text"


@dataclass
class IndexOptions:
    """The kind of index, its memory budget and how its parameters are chosen."""

    kind: IndexKind = IndexKind.auto
    """flat (exact inner product), hnsw (a graph: fast, flat's memory and more), ivf
    (compressed: inverted lists of 8-bit scalar or product-quantised codes, IVF-SQ8 / IVF-PQ)
    or auto: flat up to exact_max vectors that fit memory_budget, else hnsw where it fits
    memory_budget, else ivf."""
    field: IndexField = IndexField.auto
    """image or text embeddings; auto: image where the shards hold them."""
    memory_budget: str | None = None
    """Most bytes the index may take, e.g. 2GB, 500MB, 1e9 (null: no limit). hnsw chooses its
    links and ivf its code (SQ8, then PQ of dim/8, dim/16, dim/32 bytes) to fit it."""
    exact_max: int = 200000
    """kind=auto: most vectors searched exactly (flat)."""
    target_recall: float = 0.95
    """hnsw / ivf: the search parameter (efSearch / nprobe) is the smallest whose recall@10
    against exact search on the held-out queries reaches this."""
    queries: int = 1000
    """Held-out queries (vectors of the collection, left out of training) measuring recall@10
    and query speed."""
    train_size: int = 100000
    """ivf: vectors its lists and code are trained on (a random sample)."""
    rebuild: bool = False
    """Build anew over every shard given, even where out holds an index (by default new
    shards are added to it)."""
    seed: int = 0
    """Seed of the held-out queries and training sample."""


@dataclass
class IndexRunConfig:
    """`python -m flava.index`."""

    embeddings: list[str] = field(default_factory=list)
    """Embedding folders written by flava.embed, in order: embeddings=[DIR] or [DIR1,DIR2]."""
    out: str | None = None
    """Index folder: index.faiss and index.json (recall@10, size, query speed, shards). When it
    holds an index already, shards not in it are added (index.rebuild=true builds anew)."""
    index: IndexOptions = field(default_factory=IndexOptions)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int | float | None) -> int | None:
    """A size such as 2GB, 512MiB, 1e9 or 1000 as bytes; None for None. ValueError if not."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 2GB, 512MiB, 1e9)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _size_ok(text: str | None) -> bool:
    try:
        return (parse_bytes(text) or 1) > 0
    except ValueError:
        return False


def validate_index(cfg: IndexRunConfig) -> None:
    """Value checks of the index command (the shards are read when it runs)."""
    if not cfg.embeddings:
        raise ConfigError(
            "embeddings is not set: give the folders flava.embed wrote, embeddings=[DIR]"
        )
    i = cfg.index
    checks: list[Check] = [
        (cfg.out is not None and str(cfg.out) != "", "out", "give the index folder: out=DIR"),
        (_size_ok(i.memory_budget), "index.memory_budget", "must be a size such as 2GB or 1e9"),
        (i.exact_max >= 0, "index.exact_max", "must be >= 0"),
        (0 < i.target_recall <= 1, "index.target_recall", "must be in (0, 1]"),
        (i.queries >= 1, "index.queries", "must be >= 1"),
        (i.train_size >= 1, "index.train_size", "must be >= 1"),
    ]
    fail_checks(cfg, checks)
