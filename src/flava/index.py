"""`python -m flava.index 'embeddings=[DIR]' out=INDEX [key=value ...]`: a faiss index over
embedding shards written by flava.embed.

Exact search (flat) for small collections; HNSW or IVF (compressed: IVF-SQ8 or IVF-PQ) when
the collection passes index.exact_max vectors or index.memory_budget asks for it; the search
parameter is the smallest whose recall@10 against exact search on held-out queries reaches
index.target_recall.
Writes INDEX/index.faiss and INDEX/index.json (kind, parameters, recall@10, size in bytes,
query speed, the shards it holds). Run again with more embedding folders (or a folder with new
shards) to add them to the index: `'embeddings=[DIR,NEW_DIR]'`.

Examples:
    python -m flava.index 'embeddings=[/data/emb]' out=/data/index
    python -m flava.index 'embeddings=[/data/emb]' out=/data/index index.memory_budget=2GB
    python -m flava.index 'embeddings=[/data/emb,/data/emb_more]' out=/data/index   # adds
Keys: `python -m flava.index --help`.
"""

from __future__ import annotations

import sys
from typing import Any

from flava.config import cli_main, describe, load_config
from flava.config.checks import given
from flava.config.index import IndexRunConfig, validate_index


def run(cfg: IndexRunConfig) -> dict[str, Any]:
    """Build or extend the index per `cfg`; prints and returns what index.json holds."""
    from flava.collection import build_index
    from flava.tasks.run import print_table

    out = given(cfg.out, "out is not set: give the index folder: out=DIR")
    info = build_index(list(cfg.embeddings), out, cfg.index)
    shown = {k: v for k, v in info.items() if k not in ("sweep", "shards", "queries")}
    shown.update({f"search/{k}": v for k, v in info["search"].items()})
    print_table(f"{info['action']} {info['kind']} index -> {out}", shown)
    return info


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad configuration, missing embeddings)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(IndexRunConfig),
        lambda a: load_config(a, IndexRunConfig, validate_index),
        run,
    )


if __name__ == "__main__":
    sys.exit(main())
