"""The bad-sample policy: skipped samples counted per reason, each reason logged once per run.

`SkipLog` counts the samples one reader skips, per `SKIP_REASONS` entry; the counts travel with
the batches (`take`) to the step line, the summaries and metrics.json.

Each reason is logged once per run, with its first example, by the process that owns logging:
rank 0's main process (`log_first`). DataLoader workers and other helper processes (daemonic
ones) never log: the first example of each reason they meet travels with their counts
(`SkipLog.take_examples`) to their main process, which logs it if it owns logging and has not
logged the reason. Other ranks only count; a reason met only on them is logged by rank 0 when the
summed counts show it (`flava.training.counts`), without an example. A choice against logging in
the first process that meets a reason: that needs a channel between processes, and one rank 0 log
line a reason is the same at any process, worker, shard and epoch count. `robust_read` /
`robust_item` replace a bad sample of a random-access source by another one, and
`too_many_skipped` is the stop rule of every command.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from flava.data.sources.errors import SAMPLE_ERRORS, DataError, skip_reason
from flava.data.sources.readers import describe
from flava.data.sources.sample import Sample

log = logging.getLogger("flava.data.sources")

# Replacement draws for a random-access sample that cannot be read.
_MAX_REPLACEMENTS = 8


def _hands_over() -> bool:
    """Whether this process is a helper (a DataLoader or pool worker: a daemonic process) that
    hands its first examples over with its counts instead of logging them."""
    return multiprocessing.current_process().daemon


def _rank() -> int:
    """This process's global rank (torch.distributed, else torchrun's RANK, else 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


_LOGGED: set[str] = set()
"""The reasons this process has logged (the process that owns logging: rank 0's main one)."""


def new_run() -> None:
    """Forget the reasons logged: a new run in this process (a test, a second `main` call)."""
    _LOGGED.clear()


def log_first(reason: str, example: str) -> None:
    """Log the first skip of `reason` of the run: on rank 0's main process, once a process;
    everywhere else a no-op (see the module doc)."""
    if reason in _LOGGED or _rank() != 0 or _hands_over():
        return
    _LOGGED.add(reason)
    log.warning("skipping %s (further %s skips are counted, not logged)", example, reason)


class SkipLog:
    """Per-reason counts of the samples one reader skipped, and their first examples.

    The counts travel with the batches (`take`) to the step line, the summaries and
    metrics.json. Each reason is logged once per run (`log_first`), with the first example met
    by the process that owns logging. A helper process (DataLoader or pool worker) does not log:
    it keeps the first example of each reason for `take_examples`, whose result travels with its
    counts to the main process, which passes it to `log_first`.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}
        self.seen: set[str] = set()

    def add(self, exc: BaseException, where: str) -> None:
        """Count one skipped sample; the first of its reason is its example."""
        reason = skip_reason(exc)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if reason in self.seen:
            return
        self.seen.add(reason)
        example = f"{where} [{reason}]: {exc}"
        if _hands_over():
            self.examples[reason] = example
        else:
            log_first(reason, example)

    def take(self) -> dict[str, int]:
        """The counts since the last call (they travel with a batch), then reset."""
        out, self.counts = self.counts, {}
        return out

    def take_examples(self) -> dict[str, str]:
        """The first example of each reason not handed over yet ({} outside a helper process)."""
        out, self.examples = self.examples, {}
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

    def read(i: int) -> Sample:
        return source.item(i, kind, rng)

    name, noun = describe(source), f"{kind} samples"
    return robust_read(read, len(source), index, rng, skips, name, noun)
