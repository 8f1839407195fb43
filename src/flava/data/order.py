"""The order in which a random-access set is read: a fresh seeded permutation every epoch.

Position p of the endless stream over a set of n samples is sample `permutation(epoch)[p % n]`
with epoch p // n, the permutation drawn from `np.random.default_rng([*key, epoch])`. Pretraining
(`flava.data.mixing`) and fine-tuning (`flava.training.finetune_data`) read their sets this way,
so a run's position is a number and each process's share of a batch is a range of positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def epoch_order(start: int, count: int, n: int, key: Sequence[int]) -> np.ndarray:
    """Sample indices at stream positions start .. start + count - 1 of a set of `n` samples
    read in per-epoch permutations seeded by `key` (+ the epoch)."""
    positions = np.arange(start, start + count)
    epochs = positions // n
    out = np.empty(count, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([*key, int(epoch)]).permutation(n)
        sel = epochs == epoch
        out[sel] = order[positions[sel] % n]
    return out
