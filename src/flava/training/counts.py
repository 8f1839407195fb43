"""Bad training samples, counted per reason across processes, and the stop rule of every run.

Each batch carries the samples it skipped (`batch["skipped"]`, per `SKIP_REASONS` entry) and how
many it read; `SkipCounter` adds them up per process, sums them over processes when asked (all
processes must call `totals` together) and says when more than `max_skipped_fraction` of the
samples read were bad. Pretraining and fine-tuning use the same counter.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from flava.data.sources.errors import SKIP_REASONS
from flava.data.sources.skips import log_first, skip_metrics, too_many_skipped

CHECK_EVERY = 10
"""Steps between checks of the skipped fraction (summed over processes)."""
CHECK_MIN_BATCHES = 10
"""Batches' worth of samples read before the skipped fraction is judged."""
SUMMARY_EVERY = 100
"""Steps between the summary lines of the skipped samples (when there are new ones)."""

log = logging.getLogger("flava")


def describe_skips(counts: dict[str, int]) -> str:
    """`truncated_image 10, empty_text 2`: the non-zero counts, largest first."""
    ranked = sorted(((n, r) for r, n in counts.items() if n), key=lambda x: (-x[0], x[1]))
    return ", ".join(f"{r} {n}" for n, r in ranked)


class SkipCounter:
    """Skipped samples per reason and samples read by this process."""

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}
        self.samples_read = 0
        self.summarised = 0  # skipped samples (all processes) at the last summary line

    def add(
        self, skipped: dict[str, int], samples_read: int, examples: dict[str, str] | None = None
    ) -> None:
        """Add one batch's counts: skipped samples per reason, samples read; log the first
        example of a reason its worker met (`log_first`: once a run, rank 0)."""
        for reason, example in (examples or {}).items():
            log_first(reason, example)
        for reason, n in skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + int(n)
        self.samples_read += int(samples_read)

    def totals(self, module: Any) -> dict[str, int]:
        """Skipped per reason and `samples_read`, summed over the run's processes."""
        local = [self.skipped.get(r, 0) for r in SKIP_REASONS] + [self.samples_read]
        counts = torch.tensor(local, dtype=torch.float64, device=module.device)
        trainer = module._trainer
        if trainer is not None and trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        values = [int(v) for v in counts.tolist()]
        out = dict(zip(SKIP_REASONS, values[:-1], strict=True))
        out["samples_read"] = values[-1]
        return out

    def check(self, module: Any, limit: float, key: str, batch_size: int) -> str | None:
        """Every `CHECK_EVERY` steps: log the counts; the one-line stop reason when too many."""
        if module.global_step % CHECK_EVERY or module._trainer is None:
            return None
        totals = self.totals(module)
        read = totals.pop("samples_read")
        skipped = sum(totals.values())
        for name, n in totals.items():
            if n:  # a reason met only on other processes: rank 0 names it once
                log_first(name, f"{n} sample(s) on another process [{name}]")
        if skipped:
            module.log("data/skipped", float(skipped), on_step=True, reduce_fx="max")
            module.log("data/skipped_fraction", skipped / max(1, read), on_step=True)
            for name, n in totals.items():
                if n:
                    module.log(f"data/skipped/{name}", float(n), on_step=True, reduce_fx="max")
            self._summarise(module, totals, read)
        if read < CHECK_MIN_BATCHES * batch_size:
            return None
        reason = too_many_skipped(totals, read, limit, "training samples")
        if reason is None:
            return None
        return (
            f"stopped at step {module.global_step}: {reason}; fix or drop the data, or raise {key}"
        )

    def _summarise(self, module: Any, totals: dict[str, int], read: int) -> None:
        """Every `SUMMARY_EVERY` steps with new skips: one line of the counts per reason."""
        skipped = sum(totals.values())
        if module.global_step % SUMMARY_EVERY or skipped == self.summarised:
            return
        self.summarised = skipped
        if module.global_rank == 0:
            log.info(
                "data: %d of %d samples read were skipped (%.2f%%): %s",
                skipped,
                read,
                100 * skipped / max(1, read),
                describe_skips(totals),
            )

    @staticmethod
    def metrics(totals: dict[str, int]) -> dict[str, Any]:
        """The metrics.json entries of summed `totals` (see `skip_metrics`)."""
        totals = dict(totals)
        read = totals.pop("samples_read")
        return skip_metrics(totals, read)

    def state_dict(self) -> dict[str, Any]:
        """The counts (saved in checkpoints, so they survive a resume)."""
        return {"skipped": dict(self.skipped), "samples_read": self.samples_read}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counts of a checkpoint."""
        self.skipped = dict(state.get("skipped", {}))
        self.samples_read = int(state.get("samples_read", 0))
