"""The embedding run's progress bar: records, records/s and time left, on rank 0 only."""

from __future__ import annotations

from typing import Any


class Progress:
    """Counts the records read; shows a tqdm bar when `show`. With `total` None (a stream,
    whose shards' sizes are known once read) the total is estimated from the shards done."""

    def __init__(self, total: int | None, units: int, show: bool) -> None:
        self.count, self.total, self.units, self.units_done = 0, total, units, 0
        self.bar: Any = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="rec", desc="embedding", dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, records: int) -> None:
        """`records` more were read."""
        self.count += records
        if self.bar is not None:
            self.bar.update(records)

    def unit_done(self, estimate: bool) -> None:
        """A unit was written; `estimate`: re-estimate the total from the units done."""
        self.units_done += 1
        if self.bar is not None:
            if estimate and self.units_done < self.units:
                self.bar.total = round(self.count / self.units_done * self.units)
            self.bar.set_postfix_str(f"shard {self.units_done}/{self.units}")
