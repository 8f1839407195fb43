"""A faiss index over embedding shards: which kind, its parameters, recall, size and speed.

Every index scores by inner product of L2-normalised vectors (cosine similarity), so exact
search is `IndexFlatIP`. The kind (`index.kind=auto`): flat up to `exact_max` vectors that fit
`memory_budget`; else HNSW (a graph over the full vectors: fast, more memory than flat) where it
fits; else IVF (inverted lists of compressed codes). The structural parameters follow from the
size and the budget: HNSW's M (the largest of 64, 32, 16, 8 that fits; 32 without a budget),
IVF's lists (about 4 sqrt(n), at least 39 training vectors each) and its code, the largest that
fits: 8-bit scalar quantisation (SQ8, dim bytes per vector) or product quantisation (PQ, dim/8,
dim/16 or dim/32 bytes). The search parameter (HNSW's efSearch, IVF's nprobe) is measured:
held-out queries (`index.queries` vectors of the collection, left out of IVF's training sample)
are searched exactly and by the index at growing values, and the smallest value whose recall@10
reaches `index.target_recall` is kept (each query's own vector is left out of both lists); a
code that cannot reach it keeps the value of its best recall, and index.json says so.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flava.collection.vectors import Collection, exact_neighbours

K = 10
"""The k of the recall@k that chooses the search parameter and is reported."""
HNSW_M = (64, 32, 16, 8)
PQ_SHARES = (8, 16, 32)
"""PQ codes tried after SQ8, largest first: dim / share bytes per vector (8-bit codes of
sub-vectors of `share` dimensions; faiss trains sub-vectors of fewer than 8 dimensions about
15x slower, measured on 20k vectors of 64 dimensions: 7.9 s for 4, 0.5 s for 8)."""
IVF_MIN_VECTORS = 1000
"""Fewest training vectors of an IVF index (a PQ codebook has 256 entries)."""
IVF_MIN_TRAIN = 39
"""Fewest training vectors per inverted list (faiss warns below it)."""
SEARCH_PARAMETER = {"hnsw": "efSearch", "ivf": "nprobe"}


@dataclass
class Plan:
    """The index to build: kind, structural parameters and its estimated size."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    bytes: int = 0


def flat_bytes(n: int, d: int) -> int:
    """Estimated size of a flat index."""
    return n * d * 4


def hnsw_bytes(n: int, d: int, m: int) -> int:
    """Estimated size of an HNSW index: the vectors, 2M links a vector on level 0, the few
    upper levels and per-vector bookkeeping."""
    return n * (d * 4 + 2 * m * 4 + 32)


def ivf_codes(d: int) -> list[tuple[str, int]]:
    """(faiss code, bytes per vector) of the IVF codes, largest first."""
    return [("SQ8", d)] + [(f"PQ{d // s}np", d // s) for s in PQ_SHARES if d % s == 0]


def ivf_bytes(n: int, d: int, nlist: int, code: str, per_vector: int) -> int:
    """Estimated size of an IVF index: codes and ids, centroids, the code's tables."""
    tables = 256 * d * 4 if code.startswith("PQ") else 2 * d * 4
    return n * (per_vector + 8) + nlist * d * 4 + tables


def nlist_for(n: int, train: int) -> int:
    """IVF lists: about 4 sqrt(n), with at least IVF_MIN_TRAIN training vectors each."""
    return max(1, min(round(4 * math.sqrt(n)), train // IVF_MIN_TRAIN))


def plan_hnsw(n: int, d: int, budget: int | None) -> Plan | None:
    """HNSW with the largest M that fits `budget` (32 without one); None if none fits."""
    for m in (32,) if budget is None else HNSW_M:
        size = hnsw_bytes(n, d, m)
        if budget is None or size <= budget:
            return Plan("hnsw", {"M": m, "efConstruction": max(40, 2 * m)}, size)
    return None


def plan_ivf(n: int, d: int, budget: int | None, train: int) -> Plan | None:
    """IVF with the largest code that fits `budget` (SQ8 without one); None if none fits."""
    nlist = nlist_for(n, train)
    for code, per_vector in ivf_codes(d):
        size = ivf_bytes(n, d, nlist, code, per_vector)
        if budget is None or size <= budget:
            params = {"nlist": nlist, "code": code, "bytes_per_vector": per_vector}
            return Plan("ivf", params, size)
    return None


def choose(kind: str, n: int, d: int, budget: int | None, exact_max: int, train: int) -> Plan:
    """The index for `n` vectors of `d` dimensions (see the module doc; `train`: vectors
    IVF is trained on); one line when the kind asked for cannot fit the budget."""
    from flava.collection.errors import CollectionError

    flat = Plan("flat", {}, flat_bytes(n, d))
    if kind == "flat" or (
        kind == "auto" and n <= exact_max and (budget is None or flat.bytes <= budget)
    ):
        return flat
    if kind in ("auto", "hnsw"):
        hnsw = plan_hnsw(n, d, budget)
        if hnsw is not None:
            return hnsw
    if kind in ("auto", "ivf") and train < IVF_MIN_VECTORS:
        raise CollectionError(
            f"an ivf index trains on at least {IVF_MIN_VECTORS} vectors besides the held-out "
            f"queries, this collection leaves {train}; use index.kind=flat or hnsw"
        )
    ivf = plan_ivf(n, d, budget, train) if kind in ("auto", "ivf") else None
    if ivf is not None:
        return ivf
    smallest = ivf_bytes(n, d, 1, *ivf_codes(d)[-1])
    raise CollectionError(
        f"index.memory_budget={budget} bytes holds no {kind} index of {n} vectors of {d} "
        f"dimensions (an ivf index needs at least {smallest}); raise it"
    )


def new_index(plan: Plan, d: int) -> Any:
    """An empty faiss index for `plan` (inner product)."""
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if plan.kind == "flat":
        return faiss.IndexFlatIP(d)
    if plan.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, plan.params["M"], ip)
        index.hnsw.efConstruction = plan.params["efConstruction"]
        return index
    return faiss.index_factory(d, f"IVF{plan.params['nlist']},{plan.params['code']}", ip)


def set_search(index: Any, kind: str, value: int) -> None:
    """Set the index's search parameter (efSearch / nprobe)."""
    if kind == "hnsw":
        index.hnsw.efSearch = int(value)
    elif kind == "ivf":
        index.nprobe = int(value)


def candidates(kind: str, index: Any) -> list[int]:
    """The search parameter's values tried, smallest first."""
    if kind == "ivf":
        values = [2**i for i in range(int(math.log2(index.nlist)) + 1)]
        return values + ([index.nlist] if values[-1] != index.nlist else [])
    return [2**i for i in range(4, 12)]  # efSearch 16 .. 2048


def recall_at_k(found: np.ndarray, truth: np.ndarray, own: np.ndarray, k: int = K) -> float:
    """Recall@k of `found` against `truth` (ids [Q, k+1]), each query's own id left out."""
    hits = total = 0
    for f, t, q in zip(found, truth, own, strict=True):
        best = [int(i) for i in t if i != q and i >= 0][:k]
        got = [int(i) for i in f if i != q and i >= 0][:k]
        hits += len(set(got) & set(best))
        total += len(best)
    return hits / max(1, total)


@dataclass
class Queries:
    """Held-out queries: their ids, vectors and exact neighbours."""

    ids: np.ndarray
    vectors: np.ndarray
    truth: np.ndarray

    @classmethod
    def draw(cls, collection: Collection, count: int, seed: int) -> Queries:
        """`count` vectors of the collection (at most half of it) drawn with `seed`, with their
        exact neighbours."""
        rng = np.random.default_rng(seed)
        n = collection.size
        ids = np.sort(rng.choice(n, size=min(count, max(1, n // 2)), replace=False))
        vectors = collection.gather(ids)
        return cls(ids, vectors, exact_neighbours(collection, vectors, K + 1))


def tune(index: Any, kind: str, queries: Queries, target: float) -> tuple[int | None, list]:
    """(the smallest search parameter reaching `target` recall@10, else the best tried; the
    sweep as [{parameter: value, recall: r}])."""
    if kind not in SEARCH_PARAMETER:
        return None, []
    name, sweep, best = SEARCH_PARAMETER[kind], [], None
    for value in candidates(kind, index):
        set_search(index, kind, value)
        _, found = index.search(queries.vectors, K + 1)
        recall = recall_at_k(found, queries.truth, queries.ids)
        sweep.append({name: value, "recall_at_10": round(recall, 4)})
        if best is None or recall > best[1] + 1e-9:
            best = (value, recall)
        if recall >= target:
            best = (value, recall)
            break
    assert best is not None
    set_search(index, kind, best[0])
    return best[0], sweep


def speed(index: Any, queries: np.ndarray, singles: int = 100) -> dict[str, float]:
    """Median milliseconds of one query alone, and queries/s of all of them in one batch."""
    times = []
    for q in queries[:singles]:
        start = time.perf_counter()
        index.search(q[None], K)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    index.search(queries, K)
    batch = time.perf_counter() - start
    return {
        "query_ms": round(1000 * statistics.median(times), 4),
        "batch_queries_per_s": round(len(queries) / max(batch, 1e-9), 1),
    }
