"""Search a collection by text or by picture: `Searcher`, loaded once, answers many queries.

`Searcher.open(index_dir)` reads the faiss index and its index.json, the tables of every shard
it holds (key, path, caption, metadata in id order) and the model the shards were embedded with
(as their manifest names it; `model` overrides), in the same precision. `search_text` and
`search_image` embed the query, L2-normalise it and return the k nearest records as
`SearchResult`s, best first, scored by cosine similarity. Bad input raises `QueryError` (HTTP
400); a missing, corrupt or mismatched index, table or model raises `IndexUnavailable` (503).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flava.collection import layout
from flava.collection.errors import IndexUnavailable, QueryError
from flava.collection.index_run import read_index
from flava.collection.vectors import normalised


@dataclass(frozen=True)
class SearchResult:
    """One record found: its rank (1 = best), cosine score and table row."""

    rank: int
    score: float
    key: str
    path: str | None
    caption: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: int = 0
    """The vector's number in the index."""
    shard: str = ""
    """The embedding shard holding the record (folder/shard-NNNNNN)."""
    row: int = 0
    """The record's row in its shard's table and arrays."""

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON types."""
        return asdict(self)


def _tables(info: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """(every shard's table rows in id order, the number of each shard's first row)."""
    import pyarrow as pa

    parts, starts, start = [], [], 0
    for shard in info["shards"]:
        folder = Path(shard["folder"])
        table = layout.read_table(folder, shard["name"]).select(
            ["key", "path", "caption", "metadata"]
        )
        if table.num_rows != shard["rows"]:
            raise IndexUnavailable(
                f"{folder}/table/{shard['name']}.parquet holds {table.num_rows} rows, the "
                f"index {shard['rows']}; rebuild the index with index.rebuild=true"
            )
        parts.append(table)
        starts.append(start)
        start += table.num_rows
    return pa.concat_tables(parts) if parts else None, np.asarray(starts, dtype=np.int64)


def _encoder(info: dict[str, Any], model: str | None, device: str) -> Any:
    """The Encoder of the model the shards were embedded with (or `model`)."""
    from flava.checkpoints.io import CheckpointError
    from flava.collection.encoder import Encoder, load_model
    from flava.tasks.run import resolve_device

    spec, embedding = info["model"], info["embedding"]
    key = model or spec.get("pretrained_model_key")
    try:
        flava = load_model(key, spec.get("preset") or "flava_full", int(spec.get("seed") or 0))
    except CheckpointError as exc:
        raise IndexUnavailable(f"the query model cannot be loaded: {exc}") from None
    device_ = resolve_device(device)
    encoder = Encoder(flava, device_, embedding["precision"], embedding["text_max_length"])
    if encoder.dim != info["dim"]:
        raise IndexUnavailable(
            f"the model embeds {encoder.dim} dimensions, the index holds {info['dim']}; give "
            "the model the collection was embedded with"
        )
    return encoder


class Searcher:
    """A loaded index, its tables and the query model (see the module doc)."""

    def __init__(self, index: Any, info: dict[str, Any], encoder: Any) -> None:
        self.index, self.info, self.encoder = index, info, encoder
        self.table, self.starts = _tables(info)
        self.names = [f"{s['folder']}/{s['name']}" for s in info["shards"]]

    @classmethod
    def open(
        cls, index_dir: str | Path, model: str | None = None, device: str = "auto"
    ) -> Searcher:
        """Load the index in `index_dir`, its tables and the query model (once)."""
        index, info = read_index(index_dir)
        return cls(index, info, _encoder(info, model, device))

    @property
    def size(self) -> int:
        """Records in the index."""
        return int(self.index.ntotal)

    def search_text(self, text: str, k: int = 10) -> list[SearchResult]:
        """The k records nearest to a text query."""
        if not isinstance(text, str) or not text.strip():
            raise QueryError("the text query is empty; type what to look for")
        return self.search_vector(self.encoder.text_query(text.strip()).numpy(), k)

    def search_image(self, image: Image.Image | bytes | str, k: int = 10) -> list[SearchResult]:
        """The k records nearest to a picture (a PIL image, encoded bytes, or a path / URL)."""
        from flava.data.sources import BadSample, decode_image

        try:
            picture = decode_image(image)
            pixels = self.encoder.pixels(picture)
        except (BadSample, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", "unreadable_image").replace("_", " ")
            raise QueryError(
                f"the query is not an image that can be read ({reason}: {exc}); send a JPEG, "
                "PNG, WEBP, GIF or BMP picture"
            ) from None
        return self.search_vector(self.encoder.images(pixels[None])[0].numpy(), k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[SearchResult]:
        """The k records nearest to an embedding [P] (normalised here)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k={k!r}: ask for at least 1 result")
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.info["dim"]:
            raise QueryError(
                f"the query has {query.shape[1]} dimensions, the index {self.info['dim']}"
            )
        scores, ids = self.index.search(normalised(query), min(int(k), max(1, self.size)))
        found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        return [self._result(rank, s, i) for rank, (s, i) in enumerate(found)]

    def _result(self, rank: int, score: float, id_: int) -> SearchResult:
        """The table row of vector `id_` as a result."""
        shard = int(np.searchsorted(self.starts, id_, side="right") - 1)
        row = self.table.slice(id_, 1).to_pylist()[0]
        return SearchResult(
            rank=rank + 1,
            score=round(score, 6),
            key=row["key"],
            path=row["path"],
            caption=row["caption"],
            metadata=json.loads(row["metadata"] or "{}"),
            id=id_,
            shard=self.names[shard],
            row=id_ - int(self.starts[shard]),
        )
