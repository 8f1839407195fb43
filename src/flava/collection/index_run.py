"""The run of `python -m flava.index`, and reading an index back.

The index folder holds `index.faiss` (`faiss.write_index`) and `index.json`: its kind and
parameters, the search parameter chosen and the sweep that chose it, recall@10, size in bytes,
query speed, the model, and the shards it holds in id order (folder, name, rows). Given
embedding folders whose shards include new ones, the run adds them to the index found there
(the trained structure kept; the search parameter measured again), as long as the shards
already in it come first, in the same order; `index.rebuild=true` builds anew. Both files are
written under temporary names and renamed, the JSON last.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from flava.collection import indexing
from flava.collection.errors import IndexUnavailable
from flava.collection.indexing import Plan, Queries
from flava.collection.vectors import Collection, ShardRef
from flava.config.index import parse_bytes

log = logging.getLogger("flava")

INDEX_FILE = "index.faiss"
INDEX_JSON = "index.json"
FORMAT = "flava-index"


def read_index(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """(the faiss index, its index.json) of an index folder, its search parameter set; one
    line (`IndexUnavailable`) when missing, unreadable or not matching."""
    import faiss

    path = Path(folder).expanduser()
    info_path, index_path = path / INDEX_JSON, path / INDEX_FILE
    if not info_path.is_file() or not index_path.is_file():
        raise IndexUnavailable(
            f"{path}: no index ({INDEX_JSON} and {INDEX_FILE} not found); build one with "
            f"python -m flava.index 'embeddings=[DIR]' out={path}"
        )
    try:
        info = json.loads(info_path.read_text())
        index = faiss.read_index(str(index_path))
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IndexUnavailable(f"{path}: the index cannot be read ({first}); rebuild it") from None
    if info.get("format") != FORMAT or index.ntotal != info.get("vectors"):
        raise IndexUnavailable(
            f"{path}: {INDEX_FILE} holds {index.ntotal} vectors, {INDEX_JSON} says "
            f"{info.get('vectors')}; rebuild it with index.rebuild=true"
        )
    if info.get("search"):
        indexing.set_search(index, info["kind"], next(iter(info["search"].values())))
    return index, info


def _write(out: Path, index: Any, info: dict[str, Any]) -> None:
    """index.faiss, then index.json (each renamed into place when complete)."""
    import faiss

    from flava.collection.layout import write_json

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{INDEX_FILE}.tmp"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, out / INDEX_FILE)
    info["size_bytes"] = (out / INDEX_FILE).stat().st_size
    write_json(out / INDEX_JSON, info)


def _add(index: Any, collection: Collection, shards: list[ShardRef]) -> None:
    """Add the vectors of `shards` (their ids continue the index's)."""
    for start, x in collection.batches(shards):
        assert start == index.ntotal, (start, index.ntotal)
        index.add(x)


def _train(index: Any, plan: Plan, collection: Collection, queries: Queries, o: Any) -> None:
    """Train an IVF index on a sample of the vectors that are not held-out queries."""
    if plan.kind != "ivf":
        return
    rng = np.random.default_rng(o.seed + 1)
    rest = np.setdiff1d(np.arange(collection.size), queries.ids)
    sample = np.sort(rng.choice(rest, size=min(o.train_size, len(rest)), replace=False))
    log.info("training ivf %s on %d vectors", plan.params, len(sample))
    index.train(collection.gather(sample))


def _existing(out: Path, collection: Collection) -> tuple[Any, dict[str, Any], int] | None:
    """(the index in `out`, its info, how many of the collection's shards it holds), None
    when there is none; one line when it holds other shards or another field or model."""
    if not (out / INDEX_JSON).is_file():
        return None
    index, info = read_index(out)
    held = [s["ident"] for s in info["shards"]]
    given = [s.ident() for s in collection.shards]
    if info["field"] != collection.field or info["dim"] != collection.dim:
        raise IndexUnavailable(
            f"{out}: holds {info['field']} embeddings of {info['dim']} dimensions, not "
            f"{collection.field} of {collection.dim}; give another out or index.rebuild=true"
        )
    tag = collection.manifests[0]["settings"]["model"]["tag"]
    if info["model"]["tag"] != tag or given[: len(held)] != held:
        raise IndexUnavailable(
            f"{out}: the index holds other shards or another model's; list its embedding "
            "folders first, in the order first indexed, then the new ones (or index.rebuild=true)"
        )
    return index, info, len(held)


def build_index(folders: list[str], out: str | Path, options: Any) -> dict[str, Any]:
    """Build (or extend) the index of `folders` in `out` per `options` (`IndexOptions`);
    returns what index.json holds, with `new_vectors`, `action` and `seconds`."""
    start = time.perf_counter()
    out = Path(out).expanduser()
    collection = Collection.open(folders, str(options.field))
    n, d = collection.size, collection.dim
    found = None if options.rebuild else _existing(out, collection)
    queries = Queries.draw(collection, options.queries, options.seed)
    if found is None:
        budget = parse_bytes(options.memory_budget)
        train = min(options.train_size, n - len(queries.ids))
        plan = indexing.choose(str(options.kind), n, d, budget, options.exact_max, train)
        index, held, action = indexing.new_index(plan, d), 0, "built"
        _train(index, plan, collection, queries, options)
    else:
        index, old, held = found
        plan, action = Plan(old["kind"], old["params"]), "extended"
    _add(index, collection, collection.shards[held:])
    info = _measured(index, plan, collection, queries, options)
    _write(out, index, info)
    budget = parse_bytes(options.memory_budget)
    if budget is not None and info["size_bytes"] > budget:
        log.warning("the index takes %d bytes, more than index.memory_budget", info["size_bytes"])
    new = n - _rows(held, collection)
    log.info("%s %s index: %d vectors (%d new)", action, plan.kind, n, new)
    return {**info, "new_vectors": new, "action": action, "seconds": time.perf_counter() - start}


def _measured(
    index: Any, plan: Plan, collection: Collection, queries: Queries, options: Any
) -> dict[str, Any]:
    """Tune the search parameter; what index.json holds (its size is added when written)."""
    import faiss

    value, sweep = indexing.tune(index, plan.kind, queries, options.target_recall)
    _, result = index.search(queries.vectors, indexing.K + 1)
    recall = round(indexing.recall_at_k(result, queries.truth, queries.ids), 4)
    if recall < options.target_recall:
        log.warning(
            "%s reaches recall@10 %.3f at most, below index.target_recall=%s; a larger "
            "index.memory_budget (a larger code) or index.kind=hnsw reaches more",
            plan.kind,
            recall,
            options.target_recall,
        )
    settings = collection.manifests[0]["settings"]
    return {
        "format": FORMAT,
        "kind": plan.kind,
        "params": plan.params,
        "search": {indexing.SEARCH_PARAMETER[plan.kind]: value} if value is not None else {},
        "sweep": sweep,
        "recall_at_10": recall,
        "target_recall": options.target_recall,
        "target_reached": recall >= options.target_recall,
        "queries": len(queries.ids),
        **indexing.speed(index, queries.vectors),
        "field": collection.field,
        "dim": collection.dim,
        "vectors": int(index.ntotal),
        "metric": "cosine (inner product of L2-normalised vectors)",
        "model": settings["model"],
        "embedding": {k: settings[k] for k in ("precision", "text_max_length", "normalized")},
        "shards": [
            {"ident": s.ident(), "folder": str(s.folder.resolve()), "name": s.name, "rows": s.rows}
            for s in collection.shards
        ],
        "faiss": faiss.__version__,
    }


def _rows(shards: int, collection: Collection) -> int:
    """Vectors in the first `shards` shards."""
    return sum(s.rows for s in collection.shards[:shards])
