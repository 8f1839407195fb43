"""flava.filter's decisions: the quadratic numpy products it used before faiss against the faiss
searches it runs now (`flava.collection.similarity`), on synthetic vectors.

    python benchmarks/filter.py                       # n = 20000 and 100000, d = 768
    python benchmarks/filter.py --sizes 20000 --unit 10000

The vectors: n random directions of d dimensions, L2-normalised float32, 1% of them replaced by
noisy copies of other rows (cosine about 0.995 to their original) and `--evals` evaluation
vectors of which 50 are noisy copies of collection rows. Both sides decide `eval_copy` (cosine
to the nearest evaluation vector >= 0.98) and the near-duplicate groups (links >= 0.98 among
the rest, the lowest-ranked row of a group kept). The reference (kept here, not in src) is the
code flava.filter ran before: blocks of 2048 rows against every row by numpy, a Python loop over
the links; ours is the k=1 search and the range searches, one `--unit` of rows at a time as the
processes split them, rescored in float64, then the same union-find. Reported: seconds of each
(one process, all the machine's threads), the ratio, and whether the decisions are the same.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from machine import log

from flava.collection import similarity
from flava.collection.filter import duplicate_leaders
from flava.collection.vectors import normalised

THRESHOLD = 0.98
BLOCK = 2048


def reference_nearest(queries: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The old flava.filter: best cosine and its row, blocks of queries against every row."""
    best = np.full(len(queries), -np.inf, np.float32)
    where = np.full(len(queries), -1, np.int64)
    for start in range(0, len(queries), BLOCK):
        sims = queries[start : start + BLOCK] @ base.T  # [b, M]
        where[start : start + len(sims)] = sims.argmax(axis=1)
        best[start : start + len(sims)] = sims.max(axis=1)
    return best, where


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def reference_leaders(images: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """The old flava.filter: blocks of rows against every row, links joined as they come."""
    n = len(images)
    parent = np.arange(n)
    for start in range(0, n, BLOCK):
        sims = images[start : start + BLOCK] @ images.T  # [b, N]
        rows, cols = np.nonzero(sims >= threshold)
        for i, j in zip(rows + start, cols, strict=True):
            if j > i:
                a, b = _root(parent, int(i)), _root(parent, int(j))
                if a != b:
                    parent[max(a, b, key=lambda r: order[r])] = min(a, b, key=lambda r: order[r])
    return np.array([_root(parent, i) for i in range(n)], dtype=np.int64)


def vectors(n: int, d: int, evals: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(collection [n, d], evaluation set [evals, d]) with planted near-copies (see the doc)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    copies = rng.choice(n, size=n // 100, replace=False)
    x[copies] = x[rng.integers(0, n, len(copies))] + 0.1 * rng.normal(size=(len(copies), d))
    e = rng.normal(size=(evals, d)).astype(np.float32)
    e[:50] = x[rng.integers(0, n, 50)] + 0.1 * rng.normal(size=(50, d))
    return normalised(x), normalised(e)


def reference(images: np.ndarray, evals: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each row's decision code (0 kept, 1 eval copy, 2 near-duplicate), the old way."""
    score, _ = reference_nearest(images, evals)
    reason = np.where(score >= THRESHOLD, 1, 0)
    left = np.flatnonzero(reason == 0)
    leaders = left[reference_leaders(images[left], order[left], THRESHOLD)]
    reason[left[leaders != left]] = 2
    return reason


def ours(images: np.ndarray, evals: np.ndarray, order: np.ndarray, unit: int) -> np.ndarray:
    """The same by the faiss searches, a unit of rows at a time."""
    scores, links = [], []
    for start in range(0, len(images), unit):
        stop = min(start + unit, len(images))
        scores.append(similarity.nearest_eval(images[start:stop], evals)[0])
        links.append(similarity.exact_links(images, start, stop, THRESHOLD))
    reason = np.where(np.concatenate(scores) >= THRESHOLD, 1, 0)
    leaders = duplicate_leaders(np.concatenate(links), reason == 0, order)
    reason[(leaders != np.arange(len(images))) & (reason == 0)] = 2
    return reason


def cpu_line() -> str:
    """lscpu's model name and which of avx512f / avx512_bf16 / amx the CPU flags hold."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    have = {f: f in flags for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}
    return (
        f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, {have}"
    )


def main() -> None:
    import faiss

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--evals", type=int, default=1000)
    p.add_argument("--unit", type=int, default=10000, help="rows a unit (an embedding shard)")
    a = p.parse_args()
    log(f"machine: {cpu_line()}; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    for n in a.sizes:
        images, evals = vectors(n, a.dim, a.evals)
        order = np.arange(n)
        start = time.perf_counter()
        want = reference(images, evals, order)
        old = time.perf_counter() - start
        start = time.perf_counter()
        got = ours(images, evals, order, a.unit)
        new = time.perf_counter() - start
        counts = {k: int((got == c).sum()) for c, k in enumerate(("kept", "eval", "dup"))}
        log(f"n={n} d={a.dim}: numpy {old:.1f} s, faiss {new:.1f} s, numpy/faiss "
            f"{old / new:.2f}x, same decisions: {bool((want == got).all())} {counts}")  # fmt: skip


if __name__ == "__main__":
    main()
