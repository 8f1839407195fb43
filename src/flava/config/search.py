"""Typed schema of `python -m flava.search`: a text or an image query -> the nearest records of
an index (`flava.collection.Searcher`); its checks."""

from __future__ import annotations

from dataclasses import dataclass

from flava.config.checks import Check, Choice, ConfigError, fail_checks, given


class OutputFormat(Choice):
    """How the results are printed."""

    table = "table"
    jsonl = "jsonl"


@dataclass
class SearchRunConfig:
    """`python -m flava.search`."""

    index: str | None = None
    """Index folder written by flava.index (index.faiss + index.json)."""
    text: str | None = None
    """A text query (searches the index by its text embedding)."""
    image: str | None = None
    """An image file (or URL) as the query (searches by its image embedding)."""
    k: int = 10
    """Records returned."""
    format: OutputFormat = OutputFormat.table
    """table (rank, score, key, path, caption) or jsonl (one JSON object per record)."""
    model: str | None = None
    """Weights embedding the query (default: those the shards were embedded with, as their
    manifest.json names them; the same key spellings as model.pretrained_model_key)."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1 ..."""


INDEX_UNSET = "index is not set: give the folder flava.index wrote, index=DIR"
"""The one line of flava.search and flava.serve without an index."""
ONE_QUERY = "give one query: text='a red bus' or image=photo.jpg"


def validate_search(cfg: SearchRunConfig) -> None:
    """Value checks of the search command (the index is opened when it runs)."""
    given(cfg.index, INDEX_UNSET)
    if (cfg.text is None) == (cfg.image is None):
        raise ConfigError(ONE_QUERY)
    checks: list[Check] = [(cfg.k >= 1, "k", "must be >= 1")]
    fail_checks(cfg, checks)
