"""The filter's decisions over an embedding folder of image-text pairs (`python -m flava.filter`).

Every row of the folder gets one decision, made in this order, each over the rows the earlier
ones left: `eval_copy` (its image's cosine to its nearest image of the evaluation sets reaches
eval_threshold), `near_duplicate` (its image is in a group of images linked by cosines at least
duplicate_threshold whose lowest key is another row's), `low_score` (its image-text cosine is
under min_score, or outside the keep_fraction highest, ties broken by key), else kept. Scores
are cosines of the stored float16 embeddings read as float32 and L2-normalised; the similarities
are found by faiss and compared in float64 (`flava.collection.similarity`), so the same folder
gives the same decisions on any machine and at any process count; nothing is drawn at random.
The groups are the connected components of the links (a union-find), whose kept row is the one
of lowest key, whatever order the links come in.
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


def load_images(folder: Path, manifest: dict[str, Any]) -> np.ndarray:
    """The image embeddings [N, P] of every row, float32, normalised (as `load_pairs`)."""
    parts = [normalised(layout.read_array(folder, s["name"], "image")) for s in manifest["shards"]]
    return np.concatenate(parts) if parts else np.empty((0, int(manifest["dim"])), np.float32)


@dataclass
class Matches:
    """What the similarity searches found (`flava.collection.similarity`)."""

    eval_score: np.ndarray  # [N] float64 cosine to the nearest evaluation image (-inf: none)
    eval_match: np.ndarray  # [N] that image's number (-1: none)
    links: np.ndarray  # [L, 2] pairs (i, j), i < j, of images whose cosine reaches the threshold


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def duplicate_leaders(links: np.ndarray, alive: np.ndarray, order: np.ndarray) -> np.ndarray:
    """For each row, the row kept of its group of near-duplicates (itself when alone): groups
    join the `alive` rows by `links` (pairs of rows); the kept row is the one first in `order`
    (a rank per row: lower is kept). The groups and their kept rows do not depend on the order
    of the links."""
    n = len(alive)
    parent = np.arange(n)
    for i, j in links.tolist():
        if alive[i] and alive[j]:
            a, b = _root(parent, i), _root(parent, j)
            if a != b:  # the root is the row of lowest rank
                parent[max(a, b, key=lambda r: order[r])] = min(a, b, key=lambda r: order[r])
    return np.array([_root(parent, i) for i in range(n)], dtype=np.int64)


@dataclass
class Decisions:
    """One reason per row (`KEPT` or one of `REASONS`), and what each drop points at."""

    reason: np.ndarray  # [N] str
    duplicate_of: np.ndarray  # [N] the row kept instead (-1: none)
    eval_score: np.ndarray  # [N] float64 best cosine to an evaluation image (-inf: none)
    eval_match: np.ndarray  # [N] that evaluation image's number (-1: none)
    score_floor: float | None  # the lowest score kept by keep_fraction / min_score

    def counts(self) -> dict[str, int]:
        """Rows per decision, every reason listed."""
        return {r: int((self.reason == r).sum()) for r in (KEPT, *REASONS)}


def decide(pairs: Pairs, matches: Matches, options: Any) -> Decisions:
    """Each row's decision (see the module doc) under a `FilterOptions`, from what the
    searches found."""
    n = len(pairs.keys)
    reason = np.full(n, KEPT, dtype=object)
    reason[matches.eval_score >= options.eval_threshold] = "eval_copy"
    duplicate_of = np.full(n, -1, np.int64)
    rank = np.empty(n, np.int64)
    rank[sorted(range(n), key=lambda i: (pairs.keys[i], i))] = np.arange(n)
    if options.duplicate_threshold is not None:
        leaders = duplicate_leaders(matches.links, reason == KEPT, rank)
        dup = (leaders != np.arange(n)) & (reason == KEPT)
        reason[dup] = "near_duplicate"
        duplicate_of[dup] = leaders[dup]
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
    return Decisions(reason, duplicate_of, matches.eval_score, matches.eval_match, floor)
