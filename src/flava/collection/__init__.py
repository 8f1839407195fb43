"""The model at work on a collection: embedding shards, the faiss index, search.

The entry points `flava.embed`, `flava.index` and `flava.search` call this library. A server
builds on `Searcher` (loaded once: model, index, tables; `search_text`, `search_image`) and
maps `CollectionError.status` (400 for a bad query, 503 for a missing or corrupt index) to its
responses. The on-disk layout of embeddings and index: docs/collection.md.
"""

import logging

from flava.collection.embed_run import embed_collection
from flava.collection.encoder import Encoder
from flava.collection.errors import CollectionError, IndexUnavailable, QueryError
from flava.collection.index_run import build_index, read_index
from flava.collection.search import Searcher, SearchResult

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it loaded

__all__ = [
    "CollectionError",
    "Encoder",
    "IndexUnavailable",
    "QueryError",
    "SearchResult",
    "Searcher",
    "build_index",
    "embed_collection",
    "read_index",
]
