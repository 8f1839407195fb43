"""Micro-benchmark of the masking functions: prints microseconds per call (run by hand)."""

import time

import numpy as np
import torch

from flava.objectives.masking import BlockMaskGenerator, mask_tokens


def _per_call_us(fn, n: int) -> float:
    """Best of three timings of ``n`` calls of ``fn``, in microseconds per call."""
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main() -> None:
    """Time image mask generation for a few grids and text masking for a typical batch."""
    rng = np.random.default_rng(0)
    for gen in (BlockMaskGenerator(), BlockMaskGenerator.for_image(256, 16), BlockMaskGenerator(7)):
        h, w = gen.grid_size
        call_us = _per_call_us(lambda g=gen: g(rng), 20_000)
        batch_us = _per_call_us(lambda g=gen: g.batch(256, rng), 20) / 256
        print(
            f"BlockMaskGenerator {h}x{w}: {call_us:6.1f} us/call, {batch_us:6.1f} us/mask in batch"
        )

    ids = torch.randint(1000, 30522, (256, 77))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    word_ids = torch.arange(77).expand(256, 77) // 2
    g = torch.Generator().manual_seed(0)
    text_us = _per_call_us(lambda: mask_tokens(ids, special, 103, 30522, generator=g), 200)
    wwm_us = _per_call_us(
        lambda: mask_tokens(ids, special, 103, 30522, generator=g, word_ids=word_ids), 200
    )
    print(f"mask_tokens 256x77: {text_us:8.1f} us/batch, whole-word {wwm_us:8.1f} us/batch")


if __name__ == "__main__":
    main()
