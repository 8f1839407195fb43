"""The bad-sample policy: skipped samples counted per reason, each reason logged once per run.

`SkipLog` counts the samples one reader skips, per `SKIP_REASONS` entry; the counts travel with
the batches (`take`) to the step line, the summaries and metrics.json. `robust_read` /
`robust_item` replace a bad sample of a random-access source by another one, and
`too_many_skipped` is the stop rule of every command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from flava.data.sources.errors import SAMPLE_ERRORS, DataError, skip_reason
from flava.data.sources.readers import describe
from flava.data.sources.sample import Sample

log = logging.getLogger("flava.data.sources")

# Replacement draws for a random-access sample that cannot be read.
_MAX_REPLACEMENTS = 8


class SkipLog:
    """Per-reason counts of skipped samples of one process / worker.

    Only the first skip of each reason is logged (with the sample it was); the rest are counted,
    and the counts travel with the batches to the step line, the summaries and metrics.json.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.seen: set[str] = set()

    def add(self, exc: BaseException, where: str) -> None:
        """Count one skipped sample; log it when it is the first of its reason."""
        reason = skip_reason(exc)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if reason not in self.seen:
            self.seen.add(reason)
            log.warning(
                "skipping %s [%s]: %s (further %s skips are counted, not logged)",
                where,
                reason,
                exc,
                reason,
            )

    def take(self) -> dict[str, int]:
        """The counts since the last call (they travel with a batch), then reset."""
        out, self.counts = self.counts, {}
        return out


def too_many_skipped(counts: dict[str, int], read: int, limit: float, what: str) -> str | None:
    """The one-line reason to stop when more than `limit` of the `read` samples were skipped."""
    skipped = sum(counts.values())
    if read <= 0 or skipped <= limit * read:
        return None
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)
    return (
        f"{skipped} of {read} {what} ({skipped / read:.1%}) were skipped as bad ({reasons}), "
        f"more than max_skipped_fraction={limit}"
    )


def skip_metrics(counts: dict[str, int], read: int) -> dict[str, Any]:
    """`data/samples_read`, `data/skipped/<reason>` and `data/skipped_fraction` (metrics.json)."""
    out: dict[str, Any] = {"data/samples_read": read}
    out.update({f"data/skipped/{k}": v for k, v in sorted(counts.items())})
    out["data/skipped_fraction"] = sum(counts.values()) / max(1, read)
    return out


def robust_read(
    read: Callable[[int], Any],
    count: int,
    index: int,
    rng: np.random.Generator,
    skips: SkipLog,
    name: str,
    noun: str = "samples",
) -> Any:
    """`read(index)`, replacing an unusable sample (bad file, dead URL, empty caption) by one
    drawn from range(count) with `rng`; each skipped sample is counted in `skips` by reason.
    `name` (the source) and `noun` (what it holds) go into the log and the stop message."""
    reasons: list[str] = []
    for _ in range(_MAX_REPLACEMENTS):
        try:
            return read(index)
        except SAMPLE_ERRORS as exc:
            skips.add(exc, f"sample {index} of {name}")
            reasons.append(skip_reason(exc))
            index = int(rng.integers(count))
    raise DataError(
        f"{name}: {_MAX_REPLACEMENTS} {noun} in a row could not be used "
        f"({', '.join(sorted(set(reasons)))}); check the data or drop this source"
    )


def robust_item(
    source: Any, index: int, kind: str, rng: np.random.Generator, skips: SkipLog | None = None
) -> Sample:
    """`source.item(index, kind, rng)` (a decoded `Sample`), bad samples replaced and counted
    (see `robust_read`)."""
    skips = skips if skips is not None else SkipLog()
    read = lambda i: source.item(i, kind, rng)  # noqa: E731
    name, noun = describe(source), f"{kind} samples"
    return robust_read(read, len(source), index, rng, skips, name, noun)
