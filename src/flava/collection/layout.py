"""The embedding folder on disk, readable with numpy and pyarrow alone (docs/collection.md).

```
DIR/manifest.json               how the embeddings were made, the shards, counts, skips
DIR/table/shard-000000.parquet  one row per embedded record: key, path, caption, captions,
                                metadata (a JSON object)
DIR/image/shard-000000.npy      float16 [rows, P] image embeddings, row i = table row i
DIR/text/shard-000000.npy       float16 [rows, P] text embeddings (of the caption column)
```
A shard is written whole or not at all: its arrays, then its table, each under a temporary
name (starting with ".", which pyarrow's dataset discovery passes over) renamed when complete.
The table is renamed last, so a shard exists when its table does; a run killed in between
leaves arrays without a table, which the resumed run writes again. Each table's schema metadata
(`flava.shard`) holds its shard's counts: records read, rows, skips per reason, what it covers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flava.collection.errors import IndexUnavailable

FORMAT = "flava-embeddings"
VERSION = 1
MANIFEST = "manifest.json"
TABLE = "table"
FIELDS = ("image", "text")
"""The embedding arrays a shard may hold, each in its own sub-folder."""
SHARD_META = b"flava.shard"
_SHARD = re.compile(r"shard-(\d{6,})\.parquet")


def shard_name(unit: int) -> str:
    """The file stem of shard `unit`."""
    return f"shard-{unit:06d}"


@dataclass
class ShardRows:
    """What one shard holds: the table's columns, the arrays, and its counts."""

    keys: list[str] = field(default_factory=list)
    paths: list[str | None] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Any:
        """The rows as a pyarrow table, the counts in its schema metadata."""
        import pyarrow as pa

        columns = {
            "key": pa.array(self.keys, pa.string()),
            "path": pa.array(self.paths, pa.string()),
            "caption": pa.array([c[0] if c else None for c in self.captions], pa.string()),
            "captions": pa.array(self.captions, pa.list_(pa.string())),
            "metadata": pa.array([json.dumps(m, default=str) for m in self.metadata], pa.string()),
        }
        stats = json.dumps({**self.stats, "rows": len(self.keys)})
        return pa.table(columns).replace_schema_metadata({SHARD_META: stats.encode()})


def _replace(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk and rename it to `path` (atomic on one filesystem)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(folder: Path, unit: int, rows: ShardRows) -> None:
    """Shard `unit` into `folder`: each array, then the table (see the module doc)."""
    import pyarrow.parquet as pq

    name = shard_name(unit)
    for kind, array in rows.arrays.items():
        if len(array) != len(rows.keys):
            raise ValueError(f"{kind} embeddings have {len(array)} rows for {len(rows.keys)} keys")
        path = folder / kind / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=np.float16))
        _replace(tmp, path)
    path = folder / TABLE / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(rows.table(), tmp)
    _replace(tmp, path)


def written_units(folder: Path) -> list[int]:
    """The units whose shard is complete (its table exists), in order."""
    tables = folder / TABLE
    if not tables.is_dir():
        return []
    found = (_SHARD.fullmatch(p.name) for p in tables.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def shard_stats(folder: Path, name: str) -> dict[str, Any]:
    """The counts a shard's table carries (records read, rows, skips, what it covers)."""
    import pyarrow.parquet as pq

    path = folder / TABLE / f"{name}.parquet"
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[SHARD_META])
    except (OSError, KeyError, ValueError) as exc:
        raise IndexUnavailable(f"{path}: not a shard table flava.embed wrote ({exc})") from None


def read_table(folder: Path, name: str) -> Any:
    """A shard's table (pyarrow)."""
    import pyarrow.parquet as pq

    path = folder / TABLE / f"{name}.parquet"
    try:
        return pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise IndexUnavailable(f"{path}: cannot read the shard table ({exc})") from None


def read_array(folder: Path, name: str, kind: str) -> np.ndarray:
    """A shard's float16 embeddings [rows, P] of `kind` (image or text), memory-mapped."""
    path = folder / kind / f"{name}.npy"
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise IndexUnavailable(
            f"{path}: cannot read the {kind} embeddings ({exc}); embed the folder again"
        ) from None


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest.json, None when there is none; one line when it is not ours."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexUnavailable(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexUnavailable(f"{path}: not a manifest flava.embed wrote")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """`data` as indented JSON at `path`, written under a temporary name and renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def embedding_folder(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the folder, its manifest) of a complete embedding folder; one line otherwise."""
    path = Path(folder).expanduser()
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None:
        raise IndexUnavailable(
            f"{path}: no embeddings (manifest.json not found); run flava.embed out={path} first"
        )
    if not manifest.get("complete"):
        raise IndexUnavailable(
            f"{path}: the embedding run has not finished ({len(written_units(path))} of "
            f"{manifest.get('units')} shards); run the same flava.embed command again to resume"
        )
    return path, manifest
