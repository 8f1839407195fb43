"""`python -m flava.search index=INDEX text='...' | image=FILE [k=10] [format=jsonl]`: the records
of a collection nearest to a text or a picture.

Embeds the query with the model the collection was embedded with (its manifest names it;
`model=` overrides) and prints the top k records (rank, score, key, path, caption) as a table,
or as JSON lines (every field, metadata included) with format=jsonl. Scores are cosine
similarities. An empty query, a file that is not an image, or a missing or corrupt index stops
with one line (exit 2).

Examples:
    python -m flava.search index=/data/index text='a dog on a beach'
    python -m flava.search index=/data/index image=query.jpg k=5 format=jsonl
Keys: `python -m flava.search --help`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flava.config import cli_main, describe, load_config
from flava.config.checks import given
from flava.config.search import INDEX_UNSET, ONE_QUERY, SearchRunConfig, validate_search


def table(results: list[Any]) -> str:
    """The results as a fixed-width table (captions and paths shortened to fit)."""
    lines = [f"{'rank':>4}  {'score':>7}  {'key':<24}  {'path':<32}  caption"]
    for r in results:
        path = r.path or ""
        path = path if len(path) <= 32 else "..." + path[-29:]
        caption = r.caption or ""
        lines.append(f"{r.rank:>4}  {r.score:>7.4f}  {r.key[:24]:<24}  {path:<32}  {caption[:80]}")
    return "\n".join(lines)


def run(cfg: SearchRunConfig) -> list[Any]:
    """Answer the query per `cfg`; prints and returns the results."""
    from flava.collection import Searcher

    searcher = Searcher.open(given(cfg.index, INDEX_UNSET), model=cfg.model, device=cfg.device)
    if cfg.text is not None:
        results = searcher.search_text(cfg.text, cfg.k)
    else:
        results = searcher.search_image(given(cfg.image, ONE_QUERY), cfg.k)
    if cfg.format == "jsonl":
        print("\n".join(json.dumps(r.to_dict()) for r in results))
    else:
        print(table(results))
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad query or configuration, missing index)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(SearchRunConfig),
        lambda a: load_config(a, SearchRunConfig, validate_search),
        run,
    )


if __name__ == "__main__":
    sys.exit(main())
