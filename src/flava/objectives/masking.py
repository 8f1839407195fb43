"""Input masking for FLAVA's masked objectives: BEiT block-wise image and BERT text masking."""

# Image side (MIM / MMM): BlockMaskGenerator covers the patch grid with random rectangles until a
# patch budget is reached, as in BEiT. With the defaults at most 75 of the 196 patches of a 14x14
# grid are masked, in blocks of at least 16 patches with aspect ratios between 0.3 and 1/0.3.
# Text side (MLM / MMM): mask_tokens selects about 15% of the non-special tokens (or whole words)
# and corrupts them the BERT way: 80% become [MASK], 10% a random token and 10% stay unchanged.

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["BlockMaskGenerator", "mask_tokens"]

# Defaults of BEiT / FLAVA for a 14x14 grid (224px images, 16px patches).
_REFERENCE_NUM_PATCHES = 196
_REFERENCE_NUM_MASKING_PATCHES = 75
_REFERENCE_MIN_NUM_PATCHES = 16
# Attempts to place one block before a round is given up.
_MAX_ATTEMPTS = 10
# Uniform draws per attempt (area, log-aspect, top, left) and draws fetched from the rng at once.
_DRAWS_PER_ATTEMPT = 4
_DRAW_CHUNK = 32 * _DRAWS_PER_ATTEMPT


def _as_grid(grid_size: int | tuple[int, int]) -> tuple[int, int]:
    """Return ``grid_size`` as a validated ``(height, width)`` pair of positive ints."""
    if isinstance(grid_size, int | np.integer) and not isinstance(grid_size, bool):
        height = width = int(grid_size)
    elif (
        isinstance(grid_size, tuple | list)
        and len(grid_size) == 2
        and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in grid_size)
    ):
        height, width = int(grid_size[0]), int(grid_size[1])
    else:
        raise ValueError(f"grid_size must be an int or a pair of ints, got {grid_size!r}")
    if height < 1 or width < 1:
        raise ValueError(f"grid_size must be positive, got {(height, width)}")
    return height, width


class BlockMaskGenerator:
    """BEiT block-wise mask generator over a patch grid; each call draws one ``[H, W]`` mask."""

    def __init__(
        self,
        grid_size: int | tuple[int, int] = 14,
        num_masking_patches: int | None = None,
        min_num_patches: int | None = None,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        """Validate the arguments; ``None`` counts are scaled from the 14x14 defaults (75 / 16)."""
        height, width = _as_grid(grid_size)
        num_patches = height * width
        if num_masking_patches is None:
            num_masking_patches = round(
                _REFERENCE_NUM_MASKING_PATCHES * num_patches / _REFERENCE_NUM_PATCHES
            )
        if min_num_patches is None:
            min_num_patches = max(
                1, round(_REFERENCE_MIN_NUM_PATCHES * num_patches / _REFERENCE_NUM_PATCHES)
            )
        if not 0 <= num_masking_patches <= num_patches:
            raise ValueError(
                f"num_masking_patches must be in [0, {num_patches}] for a {height}x{width} grid, "
                f"got {num_masking_patches}"
            )
        if min_num_patches < 1:
            raise ValueError(f"min_num_patches must be >= 1, got {min_num_patches}")
        if max_num_patches is None:
            max_num_patches = num_masking_patches
        else:
            if max_num_patches < 1:
                raise ValueError(f"max_num_patches must be >= 1, got {max_num_patches}")
            if max_num_patches < min_num_patches:
                raise ValueError(
                    f"max_num_patches ({max_num_patches}) must be >= min_num_patches "
                    f"({min_num_patches})"
                )
        if not min_aspect > 0:
            raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
        if max_aspect is None:
            max_aspect = 1.0 / min_aspect
        if not max_aspect >= min_aspect:
            raise ValueError(f"max_aspect ({max_aspect}) must be >= min_aspect ({min_aspect})")

        self.height = height
        self.width = width
        self.num_masking_patches = int(num_masking_patches)
        self.min_num_patches = int(min_num_patches)
        self.max_num_patches = int(max_num_patches)
        self.min_aspect = float(min_aspect)
        self.max_aspect = float(max_aspect)
        self._log_aspect_lo = math.log(self.min_aspect)
        self._log_aspect_span = math.log(self.max_aspect) - self._log_aspect_lo
        # The grid is a Python int with bit r * W + c set for a masked cell (r, c). A block of h
        # rows is a row pattern times _row_repeat[h], which copies the pattern into h rows.
        self._row_repeat = [sum(1 << (r * width) for r in range(h)) for h in range(height)]
        self._num_bytes = (num_patches + 7) // 8
        self._fallback_rng: np.random.Generator | None = None
        self._fallback_pid = -1

    @classmethod
    def for_image(cls, image_size: int, patch_size: int, **kwargs: Any) -> BlockMaskGenerator:
        """Build a generator for square ``image_size`` images cut into ``patch_size`` patches."""
        if image_size < 1 or patch_size < 1:
            raise ValueError(
                f"image_size and patch_size must be positive, got {image_size}, {patch_size}"
            )
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        return cls(image_size // patch_size, **kwargs)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Grid shape ``(H, W)``."""
        return self.height, self.width

    @property
    def num_patches(self) -> int:
        """Number of cells in the grid, ``H * W``."""
        return self.height * self.width

    def __repr__(self) -> str:
        """Show the grid and the block parameters."""
        return (
            f"{type(self).__name__}(grid_size={self.grid_size}, "
            f"num_masking_patches={self.num_masking_patches}, "
            f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches}, "
            f"min_aspect={self.min_aspect:.3g}, max_aspect={self.max_aspect:.3g})"
        )

    def __call__(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """Draw one mask: a bool array ``[H, W]``, True where a patch is masked."""
        bits = self._sample_bits(self._resolve_rng(rng))
        flat = self._unpack(bits.to_bytes(self._num_bytes, "little"), 1)
        return flat.reshape(self.height, self.width)

    def batch(
        self, n: int, rng: np.random.Generator | Sequence[np.random.Generator] | None = None
    ) -> torch.Tensor:
        """Draw ``n`` masks as a bool tensor ``[n, H * W]``, row-major like ViT patches.

        ``rng`` is one generator drawn from mask after mask, or a sequence of ``n`` generators,
        one per mask (each mask then depends on its own generator only).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if rng is None or isinstance(rng, np.random.Generator):
            rngs: Sequence[np.random.Generator] = [self._resolve_rng(rng)] * n
        elif len(rng) != n:
            raise ValueError(f"got {len(rng)} generators for {n} masks")
        else:
            rngs = rng
        size = self._num_bytes
        packed = b"".join(self._sample_bits(r).to_bytes(size, "little") for r in rngs)
        return torch.from_numpy(self._unpack(packed, n))

    def _unpack(self, packed: bytes, n: int) -> np.ndarray:
        """Turn ``n`` little-endian packed grids into a contiguous bool array ``[n, H * W]``."""
        num_patches = self.num_patches
        bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), bitorder="little")
        bits = bits.reshape(n, self._num_bytes * 8)[:, :num_patches]
        return np.ascontiguousarray(bits).view(np.bool_)

    def _resolve_rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        """Return ``rng``, or a private generator seeded from OS entropy afresh in each process."""
        if rng is not None:
            return rng
        pid = os.getpid()
        if self._fallback_rng is None or self._fallback_pid != pid:
            # Re-seed after fork so that data-loader workers do not draw identical masks.
            self._fallback_rng = np.random.default_rng()
            self._fallback_pid = pid
        return self._fallback_rng

    def _sample_bits(self, rng: np.random.Generator) -> int:
        """Run the BEiT block placement and return the mask packed into an int (bit r * W + c)."""
        height, width = self.height, self.width
        budget = self.num_masking_patches
        max_block = self.max_num_patches
        min_block = self.min_num_patches
        log_lo, log_span = self._log_aspect_lo, self._log_aspect_span
        row_repeat = self._row_repeat
        sqrt, exp = math.sqrt, math.exp

        draws: list[float] = []
        pos = 0
        grid = 0
        count = 0
        while count < budget:
            remaining = budget - count
            hi = min(max_block, remaining)
            lo = min(min_block, hi)
            added = 0
            for _ in range(_MAX_ATTEMPTS):
                if pos + _DRAWS_PER_ATTEMPT > len(draws):
                    draws = rng.random(_DRAW_CHUNK).tolist()
                    pos = 0
                u_area, u_aspect, u_top, u_left = draws[pos : pos + _DRAWS_PER_ATTEMPT]
                pos += _DRAWS_PER_ATTEMPT
                area = lo + (hi - lo) * u_area
                aspect = exp(log_lo + log_span * u_aspect)
                h = round(sqrt(area * aspect))
                w = round(sqrt(area / aspect))
                if h >= height or w >= width:
                    continue
                top = int(u_top * (height - h + 1))
                left = int(u_left * (width - w + 1))
                block = ((((1 << w) - 1) << left) * row_repeat[h]) << (top * width)
                new = (block & ~grid).bit_count()
                if 0 < new <= remaining:
                    grid |= block
                    added = new
                    break
            if added == 0:
                break
            count += added
        return grid


# special_tokens_mask is True for [CLS], [SEP], [PAD] and other special tokens: they are never
# selected. With word_ids (-1 for special tokens, one id shared by the pieces of a word) whole
# words are selected with `probability` and all their pieces become targets; the 80/10/10 choice
# is still made per piece. With ensure_one, a row with an eligible token but no target gets one
# random eligible token (or word). Labels hold the original id at targets, ignore_index elsewhere.
# `generator` is one generator for the whole batch, or one per row: row i's draws then come from
# generator[i] alone and cover the row up to its last eligible token (or its eligible words), so
# they depend on the row's own tokens only, not on the other rows nor on trailing padding.
def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    word_ids: torch.Tensor | None = None,
    ensure_one: bool = True,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-mask ``input_ids`` [B, L]; return new ``(masked_input_ids, labels)`` tensors."""
    _check_mask_args(input_ids, special_tokens_mask, word_ids, probability, vocab_size)
    device = input_ids.device
    rows = _row_generators(generator, input_ids.shape[0])
    one = generator if isinstance(generator, torch.Generator) else None
    eligible = ~special_tokens_mask.to(device=device, dtype=torch.bool)
    if input_ids.numel() == 0:
        return input_ids.clone(), torch.full_like(input_ids, ignore_index)
    if word_ids is not None:
        word_ids = word_ids.to(device=device, dtype=torch.long)
        eligible = eligible & (word_ids >= 0)
    draws = _TokenDraws(input_ids.shape, device, eligible, one, rows)
    if word_ids is None:
        selected = _select_tokens(draws, eligible, probability, ensure_one)
    else:
        selected = _select_words(draws, eligible, word_ids, probability, ensure_one)
    return _corrupt(input_ids, selected, draws, mask_token_id, vocab_size, ignore_index)


def _check_mask_args(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    word_ids: torch.Tensor | None,
    probability: float,
    vocab_size: int,
) -> None:
    """Raise ValueError for inputs that `mask_tokens` cannot mask."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    if (
        input_ids.dtype.is_floating_point
        or input_ids.dtype.is_complex
        or input_ids.dtype == torch.bool
    ):
        raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    if special_tokens_mask.shape != input_ids.shape:
        raise ValueError(
            f"special_tokens_mask shape {tuple(special_tokens_mask.shape)} != input_ids shape "
            f"{tuple(input_ids.shape)}"
        )
    if word_ids is not None and word_ids.shape != input_ids.shape:
        raise ValueError(
            f"word_ids shape {tuple(word_ids.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")


def _row_generators(
    generator: torch.Generator | Sequence[torch.Generator] | None, batch: int
) -> list[torch.Generator] | None:
    """The per-row generators when `generator` is a sequence of them, else None."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    rows = list(generator)
    if len(rows) != batch:
        raise ValueError(f"got {len(rows)} generators for {batch} rows")
    return rows


class _TokenDraws:
    """Random draws for a [B, L] batch from one generator, or from one generator per row.

    Per row, row i's draws come from rows[i] and cover its positions up to its last eligible
    one, so that trailing padding draws nothing.
    """

    def __init__(
        self,
        shape: torch.Size,
        device: torch.device,
        eligible: torch.Tensor,
        generator: torch.Generator | None,
        rows: list[torch.Generator] | None,
    ) -> None:
        self.shape, self.device, self.generator, self.rows = shape, device, generator, rows
        self.rand_device = generator.device if generator is not None else device
        if rows is not None:
            position = torch.arange(shape[1], device=device)
            last = torch.where(eligible, position + 1, 0).amax(dim=1, keepdim=True)
            self.within = position < last  # [B, L]: the positions each row draws for
            self.lengths = self.within.sum(1).tolist()

    def _spread(self, parts: list[torch.Tensor], fill: float | int) -> torch.Tensor:
        """Per-row draws (row i's first lengths[i] positions) as a [B, L] tensor."""
        out = torch.full(self.shape, fill, dtype=parts[0].dtype, device=self.device)
        out[self.within] = torch.cat(parts).to(self.device)
        return out

    def uniform(self) -> torch.Tensor:
        """Uniform [0, 1) draws [B, L] on the input's device."""
        if self.rows is not None:  # 2.0: beyond a row's tokens (never eligible, so never used)
            parts = [
                torch.rand(n, generator=g, device=g.device)
                for g, n in zip(self.rows, self.lengths, strict=True)
            ]
            return self._spread(parts, 2.0)
        return torch.rand(self.shape, generator=self.generator, device=self.rand_device).to(
            self.device
        )

    def tokens(self, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
        """Uniform random token ids [B, L] in [0, vocab_size)."""
        if self.rows is not None:
            parts = [
                torch.randint(vocab_size, (n,), generator=g, device=g.device, dtype=dtype)
                for g, n in zip(self.rows, self.lengths, strict=True)
            ]
            return self._spread(parts, 0)
        return torch.randint(
            vocab_size, self.shape, generator=self.generator, device=self.rand_device, dtype=dtype
        ).to(self.device)

    def per_word(self, words: list[int], unused: int, num_words: int) -> torch.Tensor:
        """One uniform draw per compact word index [num_words] (`words`: words per row)."""
        if self.rows is not None:
            parts = [torch.full((unused,), 2.0)]
            parts += [
                torch.rand(n, generator=g, device=g.device)
                for g, n in zip(self.rows, words, strict=True)
            ]
            return torch.cat([t.to(self.device) for t in parts])
        return torch.rand(num_words, generator=self.generator, device=self.rand_device).to(
            self.device
        )


def _select_tokens(
    draws: _TokenDraws, eligible: torch.Tensor, probability: float, ensure_one: bool
) -> torch.Tensor:
    """Targets [B, L]: each eligible token with `probability` (ensure_one: at least one a row)."""
    selected = (draws.uniform() < probability) & eligible
    if ensure_one:
        # Argmax of iid uniforms over the eligible positions picks one of them uniformly.
        scores = draws.uniform().masked_fill(~eligible, -1.0)
        pick = scores.argmax(dim=1, keepdim=True)
        need = eligible.any(dim=1, keepdim=True) & ~selected.any(dim=1, keepdim=True)
        forced = torch.zeros_like(selected).scatter_(1, pick, True)
        selected = selected | (forced & need)
    return selected


def _select_words(
    draws: _TokenDraws,
    eligible: torch.Tensor,
    word_ids: torch.Tensor,
    probability: float,
    ensure_one: bool,
) -> torch.Tensor:
    """Targets [B, L]: every piece of each word drawn with `probability` (ensure_one: a word)."""
    # Give every (row, word) pair a compact index so that one draw serves all its pieces.
    shape, device = word_ids.shape, word_ids.device
    row_ids = torch.arange(shape[0], device=device).unsqueeze(1)
    span = int(word_ids.max().clamp(min=0).item()) + 1
    keys = torch.where(eligible, row_ids * span + word_ids, torch.full_like(word_ids, -1))
    unique_keys, word_index = torch.unique(keys, return_inverse=True)
    num_words = unique_keys.numel()
    words, unused = [], 0
    if draws.rows is not None:  # words of a row, in the order of unique_keys (row by row)
        real = unique_keys[unique_keys >= 0]
        words = torch.bincount(real // span, minlength=shape[0]).tolist()
        unused = num_words - real.numel()  # the key -1 (not a word), first if present

    def word_uniform() -> torch.Tensor:
        """One uniform draw per word, broadcast to all of its pieces."""
        return draws.per_word(words, unused, num_words)[word_index]

    selected = (word_uniform() < probability) & eligible
    if ensure_one:
        scores = word_uniform().masked_fill(~eligible, -1.0)
        pick = scores.argmax(dim=1, keepdim=True)
        chosen_word = word_index.gather(1, pick)
        need = eligible.any(dim=1, keepdim=True) & ~selected.any(dim=1, keepdim=True)
        selected = selected | (need & eligible & (word_index == chosen_word))
    return selected


def _corrupt(
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    draws: _TokenDraws,
    mask_token_id: int,
    vocab_size: int,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked ids, labels): 80% of the targets [MASK], 10% a random token, 10% unchanged."""
    # decided independently per selected piece
    action = draws.uniform()
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_tokens = draws.tokens(vocab_size, input_ids.dtype)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_tokens, masked)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, ignore_index))
    return masked, labels
