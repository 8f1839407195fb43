"""Tests for BEiT block-wise image masking and BERT text masking."""

import math

import numpy as np
import pytest
import torch

from flava.objectives import masking
from flava.objectives.masking import BlockMaskGenerator, mask_tokens

# ---------------------------------------------------------------------------------------------
# Block-wise image masking
# ---------------------------------------------------------------------------------------------


def _reference_mask(gen: BlockMaskGenerator, rng: np.random.Generator) -> np.ndarray:
    """Plain numpy version of the BEiT placement, drawing randoms in the same order."""
    height, width = gen.grid_size
    mask = np.zeros((height, width), dtype=bool)
    draws: list[float] = []
    count = 0
    while count < gen.num_masking_patches:
        remaining = gen.num_masking_patches - count
        hi = min(gen.max_num_patches, remaining)
        lo = min(gen.min_num_patches, hi)
        added = 0
        for _ in range(10):
            if len(draws) < 4:
                draws = rng.random(masking._DRAW_CHUNK).tolist()
            u_area, u_aspect, u_top, u_left = draws[:4]
            draws = draws[4:]
            area = lo + (hi - lo) * u_area
            log_lo, log_hi = math.log(gen.min_aspect), math.log(gen.max_aspect)
            aspect = math.exp(log_lo + (log_hi - log_lo) * u_aspect)
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if h >= height or w >= width:
                continue
            top, left = int(u_top * (height - h + 1)), int(u_left * (width - w + 1))
            window = mask[top : top + h, left : left + w]
            new = int(h * w - window.sum())
            if 0 < new <= remaining:
                window[...] = True
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def _counts(gen: BlockMaskGenerator, n: int, seed: int = 0) -> np.ndarray:
    """Masked-patch counts of ``n`` seeded draws."""
    rng = np.random.default_rng(seed)
    return np.array([int(gen(rng).sum()) for _ in range(n)])


def test_default_generator_matches_beit_defaults():
    gen = BlockMaskGenerator()
    assert gen.grid_size == (14, 14)
    assert gen.num_patches == 196
    assert gen.num_masking_patches == 75
    assert gen.min_num_patches == 16
    assert gen.max_num_patches == 75
    assert gen.min_aspect == pytest.approx(0.3)
    assert gen.max_aspect == pytest.approx(1 / 0.3)
    assert "14, 14" in repr(gen)


def test_default_mask_count_statistics():
    gen = BlockMaskGenerator()
    rng = np.random.default_rng(0)
    masks = [gen(rng) for _ in range(2000)]
    assert all(m.shape == (14, 14) and m.dtype == np.bool_ for m in masks)
    counts = np.array([m.sum() for m in masks])
    assert 60 <= counts.mean() <= 75
    assert counts.max() <= 75
    assert counts.min() >= 16  # the first block always holds at least min_num_patches cells


@pytest.mark.parametrize(
    "grid, seed",
    [(14, 0), (14, 1), (8, 2), (7, 3), ((10, 20), 4), (2, 5), (16, 6)],
)
def test_matches_reference_implementation(grid, seed):
    gen = BlockMaskGenerator(grid)
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(50):
        np.testing.assert_array_equal(gen(rng_a), _reference_mask(gen, rng_b))


@pytest.mark.parametrize(
    "gen, target",
    [
        (BlockMaskGenerator(8), 24),
        (BlockMaskGenerator(7), 19),
        (BlockMaskGenerator.for_image(256, 16), 98),
        (BlockMaskGenerator((10, 20)), 77),
    ],
)
def test_other_grids_scale_sensibly(gen, target):
    assert gen.num_masking_patches == target
    counts = _counts(gen, 500)
    assert counts.max() <= target
    assert counts.mean() >= 0.85 * target
    assert gen(np.random.default_rng(0)).shape == gen.grid_size


def test_for_image_grid():
    assert BlockMaskGenerator.for_image(224, 16).grid_size == (14, 14)
    gen = BlockMaskGenerator.for_image(256, 16)
    assert gen.grid_size == (16, 16)
    assert gen.min_num_patches == round(16 * 256 / 196)
    gen = BlockMaskGenerator.for_image(224, 32, num_masking_patches=10)
    assert gen.grid_size == (7, 7) and gen.num_masking_patches == 10


@pytest.mark.parametrize("aspect, shape", [(1.0, (4, 4)), (4.0, (8, 2)), (0.25, (2, 8))])
def test_fixed_aspect_gives_one_rectangle(aspect, shape):
    gen = BlockMaskGenerator(
        14, num_masking_patches=16, min_num_patches=16, min_aspect=aspect, max_aspect=aspect
    )
    rng = np.random.default_rng(0)
    corners = set()
    for _ in range(100):
        rows, cols = np.nonzero(gen(rng))
        assert len(rows) == 16
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == shape
        corners.add((rows.min(), cols.min()))
    assert len(corners) > 20  # placed at random positions


def test_tiny_and_empty_budgets():
    assert not BlockMaskGenerator(14, num_masking_patches=0)().any()
    assert not BlockMaskGenerator(1)().any()  # no block can fit a 1x1 grid
    counts = _counts(BlockMaskGenerator(2), 200)
    assert counts.max() <= 2 and counts.mean() > 1.5
    # A budget below min_num_patches is still reached with smaller blocks.
    counts = _counts(BlockMaskGenerator(14, num_masking_patches=5, min_num_patches=16), 200)
    assert counts.max() <= 5 and counts.mean() > 4


def test_max_num_patches_limits_first_block():
    gen = BlockMaskGenerator(14, num_masking_patches=75, min_num_patches=4, max_num_patches=8)
    counts = _counts(gen, 200)
    assert counts.max() <= 75 and counts.mean() > 60


def test_determinism_with_seeded_rng():
    gen = BlockMaskGenerator()
    a = [gen(np.random.default_rng(123)) for _ in range(3)]
    assert all(np.array_equal(a[0], m) for m in a)
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        np.testing.assert_array_equal(gen(rng1), gen(rng2))
    masks = {gen(np.random.default_rng(s)).tobytes() for s in range(20)}
    assert len(masks) > 15


def test_unseeded_calls_vary():
    gen = BlockMaskGenerator()
    masks = {gen().tobytes() for _ in range(20)}
    assert len(masks) > 15
    assert gen.batch(4).shape == (4, 196)


def test_batch_is_row_major_flatten_of_calls():
    gen = BlockMaskGenerator((6, 9))
    batch = gen.batch(16, np.random.default_rng(3))
    assert batch.dtype == torch.bool and batch.shape == (16, 54)
    rng = np.random.default_rng(3)
    expected = np.stack([gen(rng).reshape(-1) for _ in range(16)])
    np.testing.assert_array_equal(batch.numpy(), expected)
    assert gen.batch(0, np.random.default_rng(0)).shape == (0, 54)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_masking_patches": 197}, "num_masking_patches"),
        ({"num_masking_patches": -1}, "num_masking_patches"),
        ({"min_aspect": 0.0}, "min_aspect"),
        ({"min_aspect": -1.0}, "min_aspect"),
        ({"min_aspect": 0.5, "max_aspect": 0.4}, "max_aspect"),
        ({"min_num_patches": 0}, "min_num_patches"),
        ({"max_num_patches": 0}, "max_num_patches"),
        ({"min_num_patches": 20, "max_num_patches": 10}, "max_num_patches"),
        ({"grid_size": 0}, "grid_size"),
        ({"grid_size": (14, 14, 1)}, "grid_size"),
        ({"grid_size": 14.0}, "grid_size"),
    ],
)
def test_generator_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockMaskGenerator(**kwargs)


def test_for_image_and_batch_errors():
    with pytest.raises(ValueError, match="multiple"):
        BlockMaskGenerator.for_image(224, 15)
    with pytest.raises(ValueError, match="positive"):
        BlockMaskGenerator.for_image(0, 16)
    with pytest.raises(ValueError, match="n must"):
        BlockMaskGenerator().batch(-1)


# ---------------------------------------------------------------------------------------------
# BERT text masking
# ---------------------------------------------------------------------------------------------

CLS, SEP, PAD, MASK = 101, 102, 0, 103
VOCAB = 30522


def _text_batch(batch: int, length: int, seed: int = 0):
    """Random [CLS] tokens [SEP] [PAD]... rows, their special mask and whole-word ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (batch, length), generator=g)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    pos = torch.arange(length).expand(batch, length)
    ids[:, 0] = CLS
    ids[pos == (lengths - 1).unsqueeze(1)] = SEP
    ids[pos >= lengths.unsqueeze(1)] = PAD
    special = (ids == CLS) | (ids == SEP) | (ids == PAD)
    # Words of 1 to 3 pieces, numbered from 0 in each row; -1 for special tokens.
    starts = torch.rand(batch, length, generator=g) < 0.5
    starts[:, 1] = True
    word_ids = torch.cumsum(starts.long() * (~special).long(), dim=1) - 1
    word_ids = word_ids.masked_fill(special, -1)
    return ids, special, word_ids


def test_selection_rate_and_label_values():
    ids, special, _ = _text_batch(1024, 64)
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids, special, MASK, VOCAB, generator=g, ensure_one=False)
    assert masked.shape == ids.shape and labels.shape == ids.shape
    assert masked.dtype == ids.dtype and labels.dtype == ids.dtype
    selected = labels != -100
    rate = selected.sum().item() / (~special).sum().item()
    assert abs(rate - 0.15) < 0.01
    assert torch.equal(labels[selected], ids[selected])
    assert not selected[special].any()
    assert torch.equal(masked[special], ids[special])
    assert torch.equal(masked[~selected], ids[~selected])


def test_80_10_10_split():
    ids, special, _ = _text_batch(1024, 64, seed=1)
    g = torch.Generator().manual_seed(1)
    masked, labels = mask_tokens(ids, special, MASK, VOCAB, generator=g)
    selected = labels != -100
    n = selected.sum().item()
    new, old = masked[selected], ids[selected]
    frac_mask = (new == MASK).sum().item() / n
    frac_random = ((new != MASK) & (new != old)).sum().item() / n
    frac_kept = (new == old).sum().item() / n
    assert abs(frac_mask - 0.8) < 0.02
    assert abs(frac_random - 0.1) < 0.02
    assert abs(frac_kept - 0.1) < 0.02
    assert new.min() >= 0 and new.max() < VOCAB


def test_probability_one_selects_every_eligible_token():
    ids, special, _ = _text_batch(64, 32)
    _, labels = mask_tokens(ids, special, MASK, VOCAB, probability=1.0)
    assert torch.equal(labels != -100, ~special)


def test_ensure_one():
    ids, special, _ = _text_batch(256, 16)
    special[5] = True  # a row without any eligible token gets no target
    g = torch.Generator().manual_seed(0)
    _, labels = mask_tokens(ids, special, MASK, VOCAB, probability=0.0, generator=g)
    per_row = (labels != -100).sum(dim=1)
    assert per_row[5] == 0
    assert torch.all(per_row[torch.arange(256) != 5] == 1)
    assert not (labels != -100)[special].any()
    # The forced position is spread over the eligible positions, not always the same one.
    assert len(set((labels != -100).float().argmax(dim=1).tolist())) > 5

    _, labels = mask_tokens(ids, special, MASK, VOCAB, probability=0.0, ensure_one=False)
    assert (labels == -100).all()

    _, labels = mask_tokens(ids, special, MASK, VOCAB, probability=0.02, generator=g)
    per_row = (labels != -100).sum(dim=1)
    assert torch.all(per_row[torch.arange(256) != 5] >= 1)


def test_whole_word_masking_groups_pieces():
    ids, special, word_ids = _text_batch(512, 64, seed=2)
    g = torch.Generator().manual_seed(2)
    masked, labels = mask_tokens(
        ids, special, MASK, VOCAB, generator=g, word_ids=word_ids, ensure_one=False
    )
    selected = labels != -100
    assert not selected[special].any()
    assert torch.equal(masked[~selected], ids[~selected])
    num_words = 0
    num_selected_words = 0
    for row in range(ids.shape[0]):
        for word in word_ids[row].unique().tolist():
            if word < 0:
                continue
            states = selected[row][word_ids[row] == word]
            assert states.all() or not states.any()
            num_words += 1
            num_selected_words += int(states[0])
    assert abs(num_selected_words / num_words - 0.15) < 0.015
    # Some selected words have several pieces, so grouping actually happened.
    multi = [(word_ids[r] == word_ids[r, c]).sum() > 1 for r, c in selected.nonzero().tolist()]
    assert any(multi)


def test_whole_word_ensure_one_selects_one_full_word():
    ids, special, word_ids = _text_batch(128, 24, seed=3)
    g = torch.Generator().manual_seed(3)
    _, labels = mask_tokens(
        ids, special, MASK, VOCAB, probability=0.0, generator=g, word_ids=word_ids
    )
    selected = labels != -100
    for row in range(ids.shape[0]):
        words = word_ids[row][selected[row]].unique()
        assert words.numel() == 1 and words.item() >= 0
        assert torch.equal(selected[row], word_ids[row] == words.item())


def test_whole_word_ignores_negative_word_ids_and_special_tokens():
    ids = torch.tensor([[CLS, 5000, 5001, 5002, SEP, PAD]])
    special = torch.tensor([[True, False, False, False, True, True]])
    word_ids = torch.tensor([[-1, 0, 0, -1, -1, -1]])
    _, labels = mask_tokens(ids, special, MASK, VOCAB, probability=1.0, word_ids=word_ids)
    assert (labels != -100).tolist() == [[False, True, True, False, False, False]]


def test_inputs_not_modified_and_determinism():
    ids, special, word_ids = _text_batch(32, 20)
    copies = ids.clone(), special.clone(), word_ids.clone()
    out_a = mask_tokens(ids, special, MASK, VOCAB, generator=torch.Generator().manual_seed(9))
    out_b = mask_tokens(ids, special, MASK, VOCAB, generator=torch.Generator().manual_seed(9))
    wwm = mask_tokens(ids, special, MASK, VOCAB, probability=0.5, word_ids=word_ids)
    assert torch.equal(ids, copies[0]) and torch.equal(special, copies[1])
    assert torch.equal(word_ids, copies[2])
    assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])
    assert out_a[0].data_ptr() != ids.data_ptr() and wwm[0].data_ptr() != ids.data_ptr()


def test_custom_ignore_index_int_special_mask_and_int32_ids():
    ids, special, _ = _text_batch(16, 12)
    masked, labels = mask_tokens(
        ids.int(), special.long(), MASK, VOCAB, probability=0.5, ignore_index=-1
    )
    assert masked.dtype == torch.int32 and labels.dtype == torch.int32
    assert set(labels[special].tolist()) == {-1}


def test_empty_sequences():
    ids = torch.zeros(3, 0, dtype=torch.long)
    masked, labels = mask_tokens(ids, ids.bool(), MASK, VOCAB)
    assert masked.shape == (3, 0) and labels.shape == (3, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_ids": torch.ones(5, dtype=torch.long)}, "input_ids"),
        ({"input_ids": torch.ones(2, 4)}, "integer"),
        ({"special_tokens_mask": torch.zeros(2, 3, dtype=torch.bool)}, "special_tokens_mask"),
        ({"word_ids": torch.zeros(2, 5, dtype=torch.long)}, "word_ids"),
        ({"probability": -0.1}, "probability"),
        ({"probability": 1.5}, "probability"),
        ({"probability": float("nan")}, "probability"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_mask_tokens_errors(kwargs, match):
    args = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "special_tokens_mask": torch.zeros(2, 4, dtype=torch.bool),
        "mask_token_id": MASK,
        "vocab_size": VOCAB,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mask_tokens(**args)
