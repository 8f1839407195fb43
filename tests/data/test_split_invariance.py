"""A global batch does not depend on how it is split over processes (per-sample random draws)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flava.data.collate import BatchBuilder
from flava.data.mixing import FixedBatches, MixedBatches, Stream
from flava.data.sources.embedded import SceneSource
from flava.data.sources.sample import Sample
from flava.data.tokenizer import load_tokenizer
from flava.data.transforms import image_transform
from flava.objectives.masking import BlockMaskGenerator, mask_tokens

B = 4  # per-process batch size of the two-process split; one process takes 2 * B
SIZE = 32  # image side; 4 px patches: an 8 x 8 grid, 24 patches masked per image
TEXT_MAX = 24  # text_max_length
TEXT_KEYS = ("input_ids", "input_ids_masked", "mlm_labels", "attention_mask", "token_type_ids")
IMAGE_KEYS = ("pixel_values", "codebook_pixel_values", "bool_masked_pos")


def builder(kind="pretrain", padding="longest", whole_word_masking=False) -> BatchBuilder:
    return BatchBuilder(
        load_tokenizer(),
        image_transform(kind, image_size=SIZE, codebook_size=16),
        BlockMaskGenerator.for_image(SIZE, 4),
        text_max_length=TEXT_MAX,
        whole_word_masking=whole_word_masking,
        padding=padding,
    )


@pytest.fixture(scope="module")
def scenes():
    return SceneSource("train", size=200, image_size=SIZE)


def pad_values(tokenizer) -> dict[str, int]:
    pad = tokenizer.pad_token_id
    return {
        "input_ids": pad,
        "input_ids_masked": pad,
        "mlm_labels": -100,
        "attention_mask": 0,
        "token_type_ids": 0,
    }


def joined(halves: list[dict], key: str, pad: dict[str, int]) -> torch.Tensor:
    """torch.cat of the halves along the batch; texts right-padded to the longer first."""
    parts = [h[key] for h in halves]
    if key in pad:
        length = max(p.shape[1] for p in parts)
        parts = [F.pad(p, (0, length - p.shape[1]), value=pad[key]) for p in parts]
    return torch.cat(parts)


def check_split(one: dict, halves: list[dict], kind: str, pad: dict[str, int]) -> None:
    keys = (IMAGE_KEYS if kind in ("image", "vl") else ()) + (
        TEXT_KEYS if kind in ("text", "vl") else ()
    )
    assert all(h["kind"] == one["kind"] == kind for h in halves)
    for key in keys:
        assert key in one, key
        expected = joined(halves, key, pad)
        assert one[key].shape == expected.shape, key
        assert torch.equal(one[key], expected), key
    if kind != "image":  # the one-process batch is padded to the longer half, not beyond
        assert one["input_ids"].shape[1] == max(h["input_ids"].shape[1] for h in halves)


def check_varied(batches: list[dict], kind: str) -> None:
    """The draws differ from sample to sample and from batch to batch (and are real masks)."""
    if kind in ("image", "vl"):
        masks = torch.cat([b["bool_masked_pos"] for b in batches])
        assert len({tuple(m.tolist()) for m in masks}) == len(masks), "two equal block masks"
        assert ((masks.sum(1) > 0) & (masks.sum(1) <= 24)).all()
    if kind in ("text", "vl"):
        # short captions often have one target: equal patterns happen, but not for most rows
        targets = [b["mlm_labels"] != -100 for b in batches]
        rows = {tuple(r.tolist()) for t in targets for r in F.pad(t, (0, TEXT_MAX - t.shape[1]))}
        assert len(rows) > sum(len(t) for t in targets) // 2
        for b, t in zip(batches, targets, strict=True):
            assert (t.sum(1) >= 1).all()
            assert torch.equal(b["mlm_labels"][t], b["input_ids"][t])
            assert not (t & (b["attention_mask"] == 0)).any()


def flat(batch) -> dict:
    """A PretrainingBatch's tensors with its kind and index, to compare as one dict."""
    return {**batch.tensors, "kind": batch.kind, "batch_index": batch.index}


def batches(kind, scenes, build, batch_size, rank=0, world_size=1, count=4, seed=3):
    ds = MixedBatches(
        {kind: Stream(kind, [scenes], [1.0])},
        build,
        batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    it = ds.batches()
    return [flat(next(it)) for _ in range(count)]


@pytest.mark.parametrize(
    "kind, padding, whole_word",
    [
        ("image", "longest", False),
        ("text", "longest", False),
        ("text", "max_length", True),
        ("vl", "longest", False),
        ("vl", "max_length", False),
    ],
)
def test_one_process_batch_is_the_two_process_halves(scenes, kind, padding, whole_word):
    build = builder(padding=padding, whole_word_masking=whole_word)
    pad = pad_values(build.tokenizer)
    one = batches(kind, scenes, build, 2 * B)
    ranks = [batches(kind, scenes, build, B, rank, 2) for rank in (0, 1)]
    for b, single in enumerate(one):
        assert single["batch_index"] == b
        check_split(single, [r[b] for r in ranks], kind, pad)
        if padding == "max_length":  # no padding to reconcile: the halves concatenate as they are
            assert single["input_ids"].shape[1] == TEXT_MAX
            for key in TEXT_KEYS:
                assert torch.equal(single[key], torch.cat([r[b][key] for r in ranks])), key
    if padding == "longest" and kind != "image":  # the padding to reconcile is exercised
        lengths = [
            (r0["input_ids"].shape[1], r1["input_ids"].shape[1])
            for r0, r1 in zip(*ranks, strict=True)
        ]
        assert any(a != b for a, b in lengths), lengths
    check_varied(one, kind)


def test_same_sample_everywhere_gets_different_draws(scenes):
    # the same pair at every position: only the draws tell the samples apart
    item = scenes.item(0, "vl", np.random.default_rng(0))
    ds = MixedBatches({"vl": Stream("vl", [_Same(item)], [1.0])}, builder(), 2 * B, seed=1)
    it = ds.batches()
    first, second = flat(next(it)), flat(next(it))
    for b in (first, second):
        views = b["pixel_values"].flatten(1)
        assert len({tuple(v.tolist()) for v in views}) > B  # crops (32 px: few distinct ones)
        assert len({tuple(m.tolist()) for m in b["bool_masked_pos"]}) == 2 * B
        targets = b["mlm_labels"] != -100
        assert len({tuple(t.tolist()) for t in targets}) > B  # text masks
    # and the next batch draws afresh at the same positions
    for key in ("pixel_values", "bool_masked_pos", "mlm_labels"):
        assert not torch.equal(first[key], second[key]), key


class _Same:
    """A random-access source holding one decoded sample many times."""

    kinds = frozenset({"image", "text", "vl"})

    def __init__(self, item: Sample) -> None:
        self.it = item

    def __len__(self) -> int:
        return 64

    def item(self, index, kind, rng):
        return self.it


def test_validation_batches_are_split_invariant(scenes):
    build = builder(kind="eval")
    pad = pad_values(build.tokenizer)
    stream = Stream("vl", [scenes], [1.0])
    one = FixedBatches(stream, build, 2 * B, num_batches=3, seed=5)
    halves = [FixedBatches(stream, build, B, 3, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert one.num_batches == halves[0].num_batches == 3
    ones = [flat(b) for b in one]
    assert len(ones) == 3
    for index, single in enumerate(ones):
        check_split(single, [flat(h[index]) for h in halves], "vl", pad)
    check_varied(ones, "vl")
    again = flat(one[1])  # deterministic: the same batch again
    for key in ("input_ids_masked", "mlm_labels", "bool_masked_pos", "pixel_values"):
        assert torch.equal(again[key], ones[1][key]), key


def test_per_sample_draws_keep_the_distributions():
    """Per-item generators draw the same distributions as one generator for the batch."""
    build = builder()
    texts = [
        f"a {c} {s} on a striped background left of a small {o} circle"
        for c in ("red", "green", "blue", "white")
        for s in ("square", "star", "heart", "cross")
        for o in ("red", "yellow")
    ] * 8
    n = len(texts)
    shared = build.texts(texts, torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    per = build.texts(texts, gens)
    eligible = (shared["attention_mask"] == 1).sum() - 2 * n
    frac = [float((x["mlm_labels"] != -100).sum() / eligible) for x in (shared, per)]
    assert abs(frac[0] - frac[1]) < 0.03 and 0.12 < frac[1] < 0.22, frac
    mask_id = build.tokenizer.mask_token_id
    targets = per["mlm_labels"] != -100
    share = float((per["input_ids_masked"][targets] == mask_id).float().mean())
    assert 0.7 < share < 0.9, share
    masks = build.mask_generator
    one = masks.batch(n, np.random.default_rng(0)).sum(1).float()
    many = masks.batch(n, [np.random.default_rng([7, i]) for i in range(n)]).sum(1).float()
    assert abs(float(one.mean() - many.mean())) < 1.0, (one.mean(), many.mean())
    # flips: about half of the views of an asymmetric picture are mirrored
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[:, : SIZE // 2, 0] = 255
    from PIL import Image

    picture = Image.fromarray(pixels)
    transform = image_transform("pretrain", SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    views = transform.batch([picture] * 200, [torch.Generator().manual_seed(i) for i in range(200)])
    red = views["pixel_values"][:, 0]
    flipped = int((red[:, :, :8].mean((1, 2)) < red[:, :, -8:].mean((1, 2))).sum())
    assert 70 < flipped < 130, flipped


def test_generator_lists_must_match_the_batch():
    build = builder()
    with pytest.raises(ValueError, match="generators"):
        build.texts(["a", "b"], [torch.Generator()])
    with pytest.raises(ValueError, match="generators"):
        build.mask_generator.batch(2, [np.random.default_rng(0)])
    with pytest.raises(ValueError, match="generators"):
        build.transform.batch([], [torch.Generator()])
    with pytest.raises(ValueError, match="padding"):
        BatchBuilder(build.tokenizer, build.transform, build.mask_generator, padding="none")


@pytest.mark.parametrize("whole_word", [False, True])
def test_per_row_text_masks_ignore_other_rows_and_padding(whole_word):
    tok = load_tokenizer()
    texts = ["a red square left of a tiny blue circle", "stars", "an unbelievably striped heart"]

    def masked(batch_texts, seeds, padding):
        enc = tok(batch_texts, max_length=TEXT_MAX, padding=padding, return_word_ids=True)
        out = mask_tokens(
            enc["input_ids"],
            enc["special_tokens_mask"],
            tok.mask_token_id,
            tok.vocab_size,
            probability=0.5,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            word_ids=enc["word_ids"] if whole_word else None,
        )
        return out, enc["attention_mask"].sum(1).tolist()

    (ids, labels), _ = masked(texts, [10, 11, 12], "longest")
    for i, text in enumerate(texts):
        for padding in ("longest", "max_length"):
            (alone_ids, alone_labels), (n,) = masked([text], [10 + i], padding)
            assert torch.equal(ids[i, :n], alone_ids[0, :n])
            assert torch.equal(labels[i, :n], alone_labels[0, :n])
            assert (labels[i, n:] == -100).all() and (alone_labels[0, n:] == -100).all()
    assert (labels != -100).sum() > 3  # about half the tokens (or words) are targets
