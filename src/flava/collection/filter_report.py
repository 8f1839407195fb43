"""What `python -m flava.filter` writes beside the kept shards: the examples of report.json,
the score histogram (scores.png) and every pair's decision (decisions.parquet)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from flava.collection import layout
from flava.collection.filter import KEPT, REASONS, Decisions, Pairs
from flava.collection.similarity import cosines


def examples(pairs: Pairs, d: Decisions, count: int, seed: int) -> dict[str, list[dict]]:
    """Up to `count` rows of each decision, drawn with `seed`, with what each points at."""
    rng, out = random.Random(seed), {}
    for reason in (*REASONS, KEPT):
        rows = np.flatnonzero(d.reason == reason).tolist()
        picked = sorted(rng.sample(rows, min(count, len(rows))))
        out[reason] = [_example(pairs, d, i) for i in picked]
    return out


def _example(pairs: Pairs, d: Decisions, i: int) -> dict[str, Any]:
    """One row as the report shows it."""
    row: dict[str, Any] = {
        "key": pairs.keys[i],
        "shard": layout.shard_name(int(pairs.units[i])),
        "path": pairs.paths[i],
        "caption": pairs.captions[i],
        "score": round(float(pairs.scores[i]), 4),
    }
    if d.duplicate_of[i] >= 0:
        j = int(d.duplicate_of[i])
        cos = float(cosines(pairs.image[i : i + 1], pairs.image[j : j + 1])[0])
        row["duplicate_of"] = {"key": pairs.keys[j], "caption": pairs.captions[j], "cosine": cos}
    if d.eval_match[i] >= 0:
        row["eval_image"] = {"number": int(d.eval_match[i]), "cosine": float(d.eval_score[i])}
    return row


def histogram(scores: np.ndarray, reason: np.ndarray, floor: float | None, path: Path) -> None:
    """The image-text scores, kept and dropped stacked, the lowest kept score marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    groups = [(r, scores[reason == r]) for r in (KEPT, *REASONS)]
    groups = [(r, s) for r, s in groups if len(s)]
    if groups:
        ax.hist([s for _, s in groups], bins=50, stacked=True, label=[r for r, _ in groups])
        ax.legend()
    if floor is not None:
        ax.axvline(floor, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("image-text cosine")
    ax.set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def decisions_table(pairs: Pairs, d: Decisions, path: Path) -> None:
    """Every row's decision as parquet: key, shard, score, reason, the key it duplicates."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dup = [pairs.keys[j] if j >= 0 else None for j in d.duplicate_of]
    table = pa.table({
        "key": pairs.keys,
        "shard": [layout.shard_name(int(u)) for u in pairs.units],
        "score": pairs.scores.astype(np.float32),
        "reason": [str(r) for r in d.reason],
        "duplicate_of": pa.array(dup, pa.string()),
        "eval_cosine": np.where(np.isfinite(d.eval_score), d.eval_score, np.nan).astype(np.float32),
    })  # fmt: skip
    pq.write_table(table, path)
