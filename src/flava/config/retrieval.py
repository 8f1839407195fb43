"""Typed schema of `python -m flava.retrieval`: images with every caption, R@k; its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from flava.config.checks import Check, Choice
from flava.config.common import (
    RENAMED_EVAL_KEYS,
    EvalDataConfig,
    ModelConfig,
    RunOptions,
    eval_checks,
    fail_eval_checks,
)


class RetrievalDataKind(Choice):
    """Where retrieval's images and captions come from."""

    source = "source"
    embedded = "embedded"
    coco = "coco"
    flickr30k = "flickr30k"
    captions = "captions"


EMBEDDED_RETRIEVAL_SIZE = 512
"""Scenes of an embedded retrieval set when data.size is not given."""


@dataclass
class RetrievalDataConfig(EvalDataConfig):
    """Where the images and their captions come from."""

    # Retrieval's own kinds replace the inherited field in place (the keys keep their order,
    # OmegaConf checks this enum); a checker sees an override of another enum type.
    kind: RetrievalDataKind = RetrievalDataKind.embedded  # type: ignore[assignment]
    """source (data.source: any source type with captioned images), embedded (generated
    scenes), a Karpathy split (coco, flickr30k) or a captions folder. The named kinds are read
    as sources."""


@dataclass
class RetrievalOptions:
    """Recall cut-offs and the embedding cache."""

    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    """k of R@k."""
    cache_dir: str | None = None
    """Embedding cache directory (default <run_dir>/cache); null with use_cache=false: none."""
    use_cache: bool = True
    """Reuse embeddings cached for the same model, dataset and settings."""


@dataclass
class RetrievalRunConfig:
    """`python -m flava.retrieval`."""

    run: RunOptions = field(default_factory=lambda: RunOptions(run_dir="runs/retrieval"))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: RetrievalDataConfig = field(default_factory=RetrievalDataConfig)
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)
    renamed_keys: ClassVar[dict[str, str]] = RENAMED_EVAL_KEYS
    """Old spellings still read (each moved to its new key, with a warning)."""


def validate_retrieval(cfg: RetrievalRunConfig, max_scenes: int | None = None) -> None:
    """Value checks of the retrieval command; `max_scenes` (the scene generator's number of
    distinct scenes, passed by the entry point) caps an embedded set's size."""
    checks = eval_checks(cfg)
    checks.append((all(k >= 1 for k in cfg.retrieval.ks), "retrieval.ks", "k must be >= 1"))
    if max_scenes is not None:
        checks.append(_scene_count_check(cfg.data, max_scenes))
    fail_eval_checks(cfg, checks)


def _scene_count_check(d: RetrievalDataConfig, max_scenes: int) -> Check:
    """Embedded retrieval sets (data.kind=embedded, or a data.source of type embedded) hold at
    most `max_scenes` distinct scenes: data.size (kind=source: the smaller of data.size and
    data.source.size)."""
    hint = f"embedded retrieval sets hold at most {max_scenes} distinct scenes"
    if d.kind == RetrievalDataKind.source and d.source.type == "embedded":
        size = min(d.size or d.source.size, d.source.size)
        return (size <= max_scenes, "data.source.size", f"{hint}; set data.size to fewer")
    size = d.size or EMBEDDED_RETRIEVAL_SIZE
    return (d.kind != RetrievalDataKind.embedded or size <= max_scenes, "data.size", hint)
