"""Text corpora: one document per non-empty line of .txt files, or JSONL lines with a text field."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from flava.config import SourceConfig
from flava.data.sources.errors import SourceError
from flava.data.sources.readers import IndexedSource
from flava.data.sources.registry import SourceType, check_path, need_path
from flava.data.sources.sample import Sample, texts_of
from flava.objectives.kinds import Kind


class TextFiles(IndexedSource):
    """Text documents: one per non-empty line of .txt files, or JSONL lines with a text field."""

    kinds = frozenset({Kind.text})

    def __init__(self, path: str | os.PathLike, text_fields: Sequence[str] = ("text",)) -> None:
        self.path = str(path)
        self.text_fields = [*dict.fromkeys([*text_fields, "text"])]
        self.files = _text_files(self.path)
        offsets, counts = [], []
        for name in self.files:
            lines = _line_offsets(name, self.text_fields if _is_jsonl(name) else None)
            offsets.append(lines)
            counts.append(len(lines))
        self.offsets = offsets
        self.ends = np.cumsum(counts)
        if not len(self.ends) or self.ends[-1] == 0:
            raise SourceError(f"text files {self.path}: no non-empty lines")
        self._handles: dict[int, IO[bytes]] = {}

    def __len__(self) -> int:
        return int(self.ends[-1])

    def sample(self, index: int) -> Sample:
        """Document `index` (JSONL lines without a text field give an empty sample)."""
        f = int(np.searchsorted(self.ends, index, side="right"))
        line = index - (int(self.ends[f - 1]) if f else 0)
        handle = self._handles.get(f)
        if handle is None:
            handle = self._handles[f] = open(self.files[f], "rb")
        handle.seek(int(self.offsets[f][line]))
        text = handle.readline().decode("utf-8", errors="replace").strip()
        texts = _jsonltexts_of(text, self.text_fields) if _is_jsonl(self.files[f]) else [text]
        return Sample(key=f"{Path(self.files[f]).name}:{line}", texts=texts)

    def describe(self) -> str:
        """Files and document count."""
        return f"text_files {self.path} ({len(self.files)} files, {len(self)} documents)"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def _text_files(path: str) -> list[str]:
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(
            str(f) for f in p.rglob("*") if f.suffix in (".txt", ".jsonl") and f.is_file()
        )
    elif any(c in path for c in "*?["):
        found = sorted(str(f) for f in p.parent.glob(p.name) if f.is_file())
    elif p.is_file():
        found = [str(p)]
    else:
        raise SourceError(f"text files {p} not found")
    if not found:
        raise SourceError(f"no .txt or .jsonl files at {p}")
    return found


def _is_jsonl(name: str) -> bool:
    return name.endswith(".jsonl")


def _jsonltexts_of(line: str | bytes, fields: Sequence[str]) -> list[str]:
    """The texts of the first non-empty text field of a JSONL line ([] if none)."""
    try:
        row = json.loads(line)
    except ValueError:
        return []
    if not isinstance(row, dict):
        return []
    return next((texts_of(row[k]) for k in fields if texts_of(row.get(k))), [])


def _line_offsets(name: str, jsonl_fields: Sequence[str] | None = None) -> np.ndarray:
    """Byte offsets of the documents of a file: non-empty lines (JSONL: with a text field)."""
    offsets = []
    position = 0
    with open(name, "rb") as f:
        for line in f:
            if line.strip() and (jsonl_fields is None or _jsonltexts_of(line, jsonl_fields)):
                offsets.append(position)
            position += len(line)
    return np.asarray(offsets, dtype=np.int64)


def _build(cfg: SourceConfig, role: str, image_size: int) -> TextFiles:
    return TextFiles(need_path(cfg), list(cfg.text_columns))


TEXT_FILES = SourceType("text_files", ("path", "text_columns"), _build, check_path)
"""`type: text_files`: .txt / .jsonl files under `path` (a file, folder or glob)."""
