"""The filter's decisions over an embedding folder of image-text pairs (`python -m flava.filter`).

Every row of the folder gets one decision, made in this order, each over the rows the earlier
ones left: `eval_copy` (its image's cosine to an image of the evaluation sets reaches
eval_threshold), `near_duplicate` (its image is in a group of images linked by cosines at least
duplicate_threshold whose lowest key is another row's), `low_score` (its image-text cosine is
under min_score, or outside the keep_fraction highest, ties broken by key), else kept. Scores
are cosines of the stored float16 embeddings read as float32 and L2-normalised, so the same
folder gives the same decisions on any machine; nothing is drawn at random. Similarities are
exact: blocks of rows against every row (quadratic in the rows: fine for a few million pairs
on one process; the embedding, the heavy part, runs across processes in flava.embed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flava.collection import layout
from flava.collection.vectors import normalised

REASONS = ("eval_copy", "near_duplicate", "low_score")
"""Why a pair is dropped, in the order the decisions are made."""
KEPT = "kept"
_BLOCK = 2048
"""Rows compared against every row at once."""


@dataclass
class Pairs:
    """The rows of an embedding folder of pairs: where each came from, its embeddings."""

    keys: list[str]
    units: np.ndarray  # [N] the shard (unit) each row is in
    captions: list[str | None]
    paths: list[str | None]
    image: np.ndarray  # [N, P] float32, normalised
    text: np.ndarray  # [N, P] float32, normalised

    @property
    def scores(self) -> np.ndarray:
        """Image-text cosine of each pair [N]."""
        return np.einsum("np,np->n", self.image, self.text)


def load_pairs(folder: Path, manifest: dict[str, Any]) -> Pairs:
    """Every row of a complete embedding folder holding image and text embeddings."""
    keys, units, captions, paths, images, texts = [], [], [], [], [], []
    for shard in manifest["shards"]:
        name = shard["name"]
        table = layout.read_table(folder, name)
        keys += table.column("key").to_pylist()
        captions += table.column("caption").to_pylist()
        paths += table.column("path").to_pylist()
        units.append(np.full(table.num_rows, int(name.rsplit("-", 1)[1])))
        images.append(normalised(layout.read_array(folder, name, "image")))
        texts.append(normalised(layout.read_array(folder, name, "text")))
    dim = int(manifest["dim"])
    image = np.concatenate(images) if images else np.empty((0, dim), np.float32)
    text = np.concatenate(texts) if texts else np.empty((0, dim), np.float32)
    unit = np.concatenate(units) if units else np.empty(0, np.int64)
    return Pairs(keys, unit, captions, paths, image, text)


def nearest(queries: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine [Q], index of the best base row [Q]) of each query (-1 when base is empty)."""
    best = np.full(len(queries), -np.inf, np.float32)
    where = np.full(len(queries), -1, np.int64)
    if len(base) == 0:
        return best, where
    for start in range(0, len(queries), _BLOCK):
        sims = queries[start : start + _BLOCK] @ base.T  # [b, M]
        where[start : start + len(sims)] = sims.argmax(axis=1)
        best[start : start + len(sims)] = sims.max(axis=1)
    return best, where


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def duplicate_leaders(images: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """For each row, the row kept of its group of near-duplicates (itself when alone): groups
    link rows whose cosine is at least `threshold`; the kept row is the one first in `order`
    (a rank per row: lower is kept)."""
    n = len(images)
    parent = np.arange(n)
    for start in range(0, n, _BLOCK):
        sims = images[start : start + _BLOCK] @ images.T  # [b, N]
        rows, cols = np.nonzero(sims >= threshold)
        for i, j in zip(rows + start, cols, strict=True):
            if j > i:
                a, b = _root(parent, int(i)), _root(parent, int(j))
                if a != b:  # the root is the row of lowest rank
                    parent[max(a, b, key=lambda r: order[r])] = min(a, b, key=lambda r: order[r])
    return np.array([_root(parent, i) for i in range(n)], dtype=np.int64)


@dataclass
class Decisions:
    """One reason per row (`KEPT` or one of `REASONS`), and what each drop points at."""

    reason: np.ndarray  # [N] str
    duplicate_of: np.ndarray  # [N] the row kept instead (-1: none)
    eval_score: np.ndarray  # [N] best cosine to an evaluation image (-inf: no sets)
    eval_match: np.ndarray  # [N] that evaluation image's number (-1: none)
    score_floor: float | None  # the lowest score kept by keep_fraction / min_score

    def counts(self) -> dict[str, int]:
        """Rows per decision, every reason listed."""
        return {r: int((self.reason == r).sum()) for r in (KEPT, *REASONS)}


def decide(pairs: Pairs, eval_images: np.ndarray, options: Any) -> Decisions:
    """Each row's decision (see the module doc) under a `FilterOptions`."""
    n = len(pairs.keys)
    reason = np.full(n, KEPT, dtype=object)
    eval_score, eval_match = nearest(pairs.image, eval_images)
    reason[eval_score >= options.eval_threshold] = "eval_copy"
    duplicate_of = np.full(n, -1, np.int64)
    rank = np.empty(n, np.int64)
    rank[sorted(range(n), key=lambda i: (pairs.keys[i], i))] = np.arange(n)
    if options.duplicate_threshold is not None:
        left = np.flatnonzero(reason == KEPT)
        leaders = left[
            duplicate_leaders(pairs.image[left], rank[left], options.duplicate_threshold)
        ]
        dup = leaders != left
        reason[left[dup]] = "near_duplicate"
        duplicate_of[left[dup]] = leaders[dup]
    scores = pairs.scores
    left = np.flatnonzero(reason == KEPT)
    if options.min_score is not None:
        low = left[scores[left] < options.min_score]
        reason[low] = "low_score"
        left = np.flatnonzero(reason == KEPT)
    if options.keep_fraction is not None and len(left):
        order = sorted(left, key=lambda i: (-float(scores[i]), rank[i]))
        reason[order[math.ceil(options.keep_fraction * len(left)) :]] = "low_score"
    kept = reason == KEPT
    floor = float(scores[kept].min()) if kept.any() else None
    return Decisions(reason, duplicate_of, eval_score, eval_match, floor)
