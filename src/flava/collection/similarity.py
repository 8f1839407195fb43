"""The filter's similarity searches, by faiss: each image's nearest evaluation image (a k=1
search) and the pairs of images whose cosine reaches a threshold (a range search).

Both run over L2-normalised float32 vectors by inner product. faiss gathers the candidates; each
candidate's cosine is then computed again in float64 from the two float32 vectors (their
products are exact, the sum rounds at about 1e-16), and that value is compared with the
threshold (`>=`). So a decision does not depend on faiss's kernels, on how many queries are
searched together (faiss switches from its own loop to BLAS at 20 queries), on the process
count or on the machine. Candidates are gathered `MARGIN` under the threshold (float32 sums of
768 products stray by about 1e-7 from the float64 value, at worst about 5e-5), so exact search
misses none.

Exact search (`exact_links`) puts blocks of the rows after a query block's first row in an
`IndexFlatIP` (one block in memory at a time): half the products of every row against every
row, and only pairs (i, j) with i < j are kept. An index built by flava.index over the same
vectors (`index_links`: HNSW or IVF) is searched instead where exact search would be too slow;
its candidates are rescored the same way, but it can miss pairs: an IVF index those whose
compressed cosine falls under the threshold by more than `APPROXIMATE_MARGIN` or whose vectors
sit in lists not probed, HNSW those that its search (efSearch candidates) does not reach.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MARGIN = 1e-4
"""Candidates are gathered this far under the threshold, then rescored (exact search)."""
APPROXIMATE_MARGIN = 1e-2
"""The same for an approximate index, whose compressed cosines stray further."""
BASE_BLOCK = 65536
"""Rows put in one flat index at a time."""


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosines [N] of normalised float32 rows `a`, `b` [N, P], computed in float64."""
    return np.einsum("np,np->n", a.astype(np.float64), b.astype(np.float64))


def flat_index(vectors: np.ndarray) -> Any:
    """An exact inner-product index holding `vectors` [M, P]."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def nearest_eval(queries: np.ndarray, evals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine [Q] float64, number [Q]) of each query's nearest evaluation image by an exact
    k=1 search (-inf and -1 when there are none)."""
    score = np.full(len(queries), -np.inf, np.float64)
    match = np.full(len(queries), -1, np.int64)
    if len(evals) == 0 or len(queries) == 0:
        return score, match
    _, found = flat_index(evals).search(np.ascontiguousarray(queries), 1)  # [Q, 1]
    match[:] = found[:, 0]
    score[:] = cosines(queries, evals[match])
    return score, match


def _pairs(lims: np.ndarray, ids: np.ndarray, first: int, offset: int) -> np.ndarray:
    """A range search's results as pairs [L, 2] (query row, found row), both numbered from 0."""
    rows = np.repeat(
        np.arange(len(lims) - 1, dtype=np.int64) + first, np.diff(lims).astype(np.int64)
    )
    return np.stack([rows, ids.astype(np.int64) + offset], axis=1)


def _kept(images: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """The pairs (i < j) whose float64 cosine reaches `threshold`, sorted."""
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    cos = cosines(images[pairs[:, 0]], images[pairs[:, 1]])
    pairs = pairs[cos >= threshold]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def exact_links(images: np.ndarray, start: int, stop: int, threshold: float) -> np.ndarray:
    """Pairs [L, 2] (i, j), i in start..stop-1, j > i, whose cosine reaches `threshold`, by
    exact range searches of rows start..stop-1 against every later row."""
    queries = np.ascontiguousarray(images[start:stop])
    found = [np.empty((0, 2), np.int64)]
    for block in range(start, len(images), BASE_BLOCK):
        index = flat_index(images[block : block + BASE_BLOCK])
        lims, _, ids = index.range_search(queries, threshold - MARGIN)
        found.append(_pairs(lims, ids, start, block))
    return _kept(images, np.concatenate(found), threshold)


def index_links(
    images: np.ndarray, start: int, stop: int, threshold: float, index: Any
) -> np.ndarray:
    """`exact_links`' pairs as an approximate index finds them (ids: row numbers)."""
    queries = np.ascontiguousarray(images[start:stop])
    lims, _, ids = index.range_search(queries, threshold - APPROXIMATE_MARGIN)
    return _kept(images, _pairs(lims, ids, start, 0), threshold)
