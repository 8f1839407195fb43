"""Typed schema of `python -m flava.serve`: an index served over HTTP (`flava.collection.app`);
its checks."""

from __future__ import annotations

from dataclasses import dataclass

from flava.config.checks import Check, fail_checks, given
from flava.config.index import parse_bytes
from flava.config.search import INDEX_UNSET


@dataclass
class ServeRunConfig:
    """`python -m flava.serve`."""

    index: str | None = None
    """Index folder written by flava.index (index.faiss + index.json). The server refuses to
    start without one; when its files change it is read again (a broken one answers 503)."""
    model: str | None = None
    """Weights embedding the queries (default: those the shards were embedded with, as their
    manifest.json names them; the same key spellings as model.pretrained_model_key)."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1 ..."""
    host: str = "127.0.0.1"
    """Address listened on (0.0.0.0: every interface; the API has no authentication)."""
    port: int = 8000
    """TCP port listened on (0: any free port, printed at start)."""
    k: int = 12
    """Results the page asks for, and the API's default k."""
    max_k: int = 100
    """Most results one query may ask for (k above it is answered 400)."""
    max_upload: str = "10MB"
    """Largest request body, e.g. an uploaded picture: 10MB, 512KiB, 1e6 (larger: 413)."""
    workers: int = 1
    """Queries embedded at a time, in threads off the event loop (each uses torch's threads);
    the page, health and thumbnails are answered meanwhile."""
    queue: int = 64
    """Most queries waiting for a worker; one more is answered 503 (busy) at once."""
    thumbnail_size: int = 256
    """Longest side, in pixels, of the thumbnails the page shows."""
    access_log: bool = False
    """Log one line per request (uvicorn's access log)."""


def validate_serve(cfg: ServeRunConfig) -> None:
    """Value checks of the serve command (the index is opened when it runs)."""
    given(cfg.index, INDEX_UNSET)
    try:
        upload = parse_bytes(cfg.max_upload)
    except ValueError:
        upload = None
    checks: list[Check] = [
        (0 <= cfg.port <= 65535, "port", "must be in 0..65535"),
        (cfg.max_k >= 1, "max_k", "must be >= 1"),
        (1 <= cfg.k <= cfg.max_k, "k", "must be in 1..max_k"),
        (upload is not None and upload >= 1024, "max_upload", "must be a size >= 1KB, e.g. 10MB"),
        (cfg.workers >= 1, "workers", "must be >= 1"),
        (cfg.queue >= 0, "queue", "must be >= 0"),
        (16 <= cfg.thumbnail_size <= 2048, "thumbnail_size", "must be in 16..2048"),
    ]
    fail_checks(cfg, checks)
