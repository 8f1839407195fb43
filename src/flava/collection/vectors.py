"""The embeddings of one or more folders as one numbered collection, read a shard at a time.

Vectors are numbered in order: the folders as given, each folder's shards in order, each shard's
rows in order; a vector's number is its id in the faiss index. They are read as float32 and
L2-normalised (the index scores by cosine similarity whether the shards are normalised or raw).
`exact_neighbours` is exact search over every vector, one shard in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flava.collection import layout
from flava.collection.errors import IndexUnavailable


@dataclass(frozen=True)
class ShardRef:
    """One shard of an embedding folder, with the number of its first vector."""

    folder: Path
    name: str
    rows: int
    start: int

    def ident(self) -> str:
        """How index.json names the shard: its folder (resolved) and name."""
        return f"{self.folder.resolve()}/{self.name}"


def normalised(x: np.ndarray) -> np.ndarray:
    """Rows as float32, L2-normalised (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12))


@dataclass
class Collection:
    """The shards of some embedding folders, their manifests, and the field read."""

    shards: list[ShardRef]
    manifests: list[dict[str, Any]]
    field: str
    dim: int

    @classmethod
    def open(cls, folders: Sequence[str | Path], field: str = "auto") -> Collection:
        """The complete embedding folders `folders`; one line when one is missing, unfinished,
        lacks `field` or was embedded by another model than the first."""
        opened = [layout.embedding_folder(f) for f in folders]
        manifests = [m for _, m in opened]
        first = manifests[0]
        if field == "auto":
            field = "image" if all("image" in m["fields"] for m in manifests) else "text"
        shards, start = [], 0
        for (path, m), name in zip(opened, folders, strict=True):
            if field not in m["fields"]:
                raise IndexUnavailable(f"{name}: holds no {field} embeddings ({m['fields']})")
            if m["settings"]["model"]["tag"] != first["settings"]["model"]["tag"]:
                raise IndexUnavailable(
                    f"{name}: embedded by another model than {folders[0]}; one index holds "
                    "embeddings of one model"
                )
            for shard in m["shards"]:
                shards.append(ShardRef(path, shard["name"], int(shard["rows"]), start))
                start += int(shard["rows"])
        return cls(shards, manifests, field, int(first["dim"]))

    @property
    def size(self) -> int:
        """Number of vectors."""
        return sum(s.rows for s in self.shards)

    def read(self, shard: ShardRef) -> np.ndarray:
        """A shard's vectors [rows, P], float32, normalised; one line when it does not match."""
        x = layout.read_array(shard.folder, shard.name, self.field)
        if x.shape != (shard.rows, self.dim):
            raise IndexUnavailable(
                f"{shard.folder}/{self.field}/{shard.name}.npy holds {x.shape}, the manifest "
                f"says ({shard.rows}, {self.dim}); embed the folder again"
            )
        return normalised(x)

    def batches(self, shards: list[ShardRef] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(number of the first vector, vectors) of each shard in order."""
        for shard in self.shards if shards is None else shards:
            if shard.rows:
                yield shard.start, self.read(shard)

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """The vectors numbered `ids` [len(ids), P], in that order."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for shard in self.shards:
            inside = np.flatnonzero((ids >= shard.start) & (ids < shard.start + shard.rows))
            if len(inside):
                rows = ids[inside] - shard.start
                x = layout.read_array(shard.folder, shard.name, self.field)
                out[inside] = normalised(x[rows])
        return out


def exact_neighbours(collection: Collection, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids [Q, k] of each query's k most similar vectors (inner product), by exact search
    over every shard in turn."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start, x in collection.batches():
        d, i = faiss.knn(queries, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, np.where(i >= 0, i + start, -1))
    heap.finalize()
    return heap.I
