"""Per-step mixing, agreement across processes, distinct samples, worker sharding, resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from flava.data.collate import BatchBuilder
from flava.data.mixing import MixedBatches, Stream
from flava.data.sources.sample import Sample
from flava.data.tokenizer import load_tokenizer
from flava.data.transforms import image_transform
from flava.objectives.masking import BlockMaskGenerator


class CountingSource:
    """Samples whose text is their own index (so batches reveal which samples they hold)."""

    kinds = frozenset({"image", "text", "vl"})

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Sample:
        return Sample(str(index), texts=[f"sample {index}"])


class TextOnlyBuilder:
    """Collates the sample indices only (no images, no tokenizer)."""

    def __call__(self, items, kind, generator, rng):
        return {"kind": kind, "ids": [int(i.text.split()[1]) for i in items]}


def stream_set(n=1000):
    return {k: Stream(k, [CountingSource(n)], [1.0]) for k in ("image", "text", "vl")}


def test_mixing_ratios_and_round_robin():
    ds = MixedBatches(
        stream_set(),
        TextOnlyBuilder(),
        4,
        seed=3,
        probabilities={"vl": 0.7, "image": 0.15, "text": 0.15},
    )
    counts = Counter(ds.kind_of(b) for b in range(10_000))
    assert abs(counts["vl"] / 1e4 - 0.70) < 0.02
    assert abs(counts["image"] / 1e4 - 0.15) < 0.02
    assert abs(counts["text"] / 1e4 - 0.15) < 0.02
    rr = MixedBatches(stream_set(), TextOnlyBuilder(), 4, sampling="round_robin")
    assert [rr.kind_of(b) for b in range(6)] == ["image", "text", "vl"] * 2
    with pytest.raises(ValueError, match="no data"):
        MixedBatches({}, TextOnlyBuilder(), 4)


def test_processes_agree_on_kind_and_get_distinct_samples():
    a = MixedBatches(stream_set(), TextOnlyBuilder(), 8, seed=1, rank=0, world_size=2)
    b = MixedBatches(stream_set(), TextOnlyBuilder(), 8, seed=1, rank=1, world_size=2)
    ia, ib = a.batches(), b.batches()
    seen: dict[str, set[int]] = {}
    for _ in range(40):
        x, y = next(ia), next(ib)
        assert x.kind == y.kind
        assert not set(x.tensors["ids"]) & set(y.tensors["ids"])
        seen.setdefault(x.kind, set())
        both = set(x.tensors["ids"]) | set(y.tensors["ids"])
        assert not seen[x.kind] & both  # within an epoch no sample repeats
        seen[x.kind] |= both


def test_workers_split_batches_and_resume_continues_exactly():
    ds = MixedBatches(stream_set(50), TextOnlyBuilder(), 4, seed=2)
    full = [next(it) for it in [ds.batches()] for _ in range(30)]
    w0 = ds.batches(0, 2, 0)
    w1 = ds.batches(0, 2, 1)
    interleaved = []
    for _ in range(15):
        interleaved += [next(w0), next(w1)]
    assert [b.tensors["ids"] for b in interleaved] == [b.tensors["ids"] for b in full]
    resumed = MixedBatches(stream_set(50), TextOnlyBuilder(), 4, seed=2, start_batch=17)
    it = iter(resumed)
    for expected in full[17:]:
        assert next(it).tensors["ids"] == expected.tensors["ids"]


def test_dataloader_workers_yield_batches_in_order():
    ds = MixedBatches(stream_set(), TextOnlyBuilder(), 4, seed=5)
    expected = [next(it) for it in [ds.batches()] for _ in range(12)]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = []
    for batch in loader:
        got.append(batch)
        if len(got) == 12:
            break
    assert [b.tensors["ids"] for b in got] == [b.tensors["ids"] for b in expected]


def test_batch_builder_shapes():
    tok = load_tokenizer()
    builder = BatchBuilder(
        tok,
        image_transform("pretrain", image_size=32, codebook_size=32),
        BlockMaskGenerator.for_image(32, 8),
        text_max_length=16,
    )
    from PIL import Image

    items = [
        Sample(str(i), Image.new("RGB", (40, 50), (i * 40, 0, 0)), [f"a red square number {i}"])
        for i in range(3)
    ]
    g = torch.Generator().manual_seed(0)
    batch = builder(items, "vl", g, np.random.default_rng(0))
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["codebook_pixel_values"].shape == (3, 3, 32, 32)
    assert batch["bool_masked_pos"].shape == (3, 16)
    assert batch["input_ids"].shape == batch["mlm_labels"].shape == batch["input_ids_masked"].shape
    assert ((batch["mlm_labels"] != -100).sum(1) >= 1).all()
    assert batch["input_ids"].shape[1] <= 16


def test_text_length_per_batch_kind():
    """Text-only batches may read long documents while captions stay short."""
    builder = BatchBuilder(
        load_tokenizer(),
        image_transform("pretrain", image_size=32),
        BlockMaskGenerator.for_image(32, 8),
        text_max_length={"text": 40, "vl": 9},
        padding="max_length",
    )
    from PIL import Image

    long = " ".join(f"word{i}" for i in range(60))
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    text = builder([Sample("0", texts=[long])], "text", g, rng)
    pair = builder([Sample("0", Image.new("RGB", (32, 32)), [long])], "vl", g, rng)
    assert text["input_ids"].shape == (1, 40) and pair["input_ids"].shape == (1, 9)


def test_pairs_are_never_flipped_images_are():
    # left half red, right half blue: a flip swaps them, and "left of" captions would lie
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :16, 0], pixels[:, 16:, 2] = 255, 255
    from PIL import Image

    picture = Image.fromarray(pixels)
    transform = image_transform("pretrain", 32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    builder = BatchBuilder(
        load_tokenizer(), transform, BlockMaskGenerator.for_image(32, 16, num_masking_patches=1)
    )
    items = [Sample("0", image=picture, texts=["a red half left of a blue half"])] * 16
    flipped = {}
    for kind in ("vl", "image"):
        batch = builder(items, kind, torch.Generator().manual_seed(0), np.random.default_rng(0))
        red = batch["pixel_values"][:, 0]
        flipped[kind] = int((red[:, :, :8].mean((1, 2)) < red[:, :, -8:].mean((1, 2))).sum())
    assert flipped["vl"] == 0 and 0 < flipped["image"] < 16, flipped
    assert transform.hflip  # the builder's own transform is left as configured


def test_random_access_sources_resume_at_another_process_count_exactly_once():
    """2 processes x batch 3 for 5 steps, then 1 process x batch 3 with the saved positions: the
    epoch of 48 samples is read once; the sample after the cut is the one the epoch had reached."""
    text = {"text": Stream("text", [CountingSource(48)], [1.0])}
    first = [MixedBatches(text, TextOnlyBuilder(), 3, seed=4, rank=r, world_size=2) for r in (0, 1)]
    seen = [
        i
        for ds in first
        for b, _ in zip(ds.batches(), range(5), strict=False)
        for i in b.tensors["ids"]
    ]
    positions = first[0].sample_positions_at(5)
    assert positions == {"text/0": 30}
    resumed = MixedBatches(
        text, TextOnlyBuilder(), 3, seed=4, start_batch=5, sample_positions=positions
    )
    it = resumed.batches(5)
    seen += [i for _ in range(6) for i in next(it).tensors["ids"]]
    assert sorted(seen) == list(range(48))
    # at the same layout the positions change nothing
    again = MixedBatches(text, TextOnlyBuilder(), 3, seed=4, rank=1, world_size=2, start_batch=5)
    same = MixedBatches(
        text,
        TextOnlyBuilder(),
        3,
        seed=4,
        rank=1,
        world_size=2,
        start_batch=5,
        sample_positions=positions,
    )
    assert next(again.batches(5)).tensors["ids"] == next(same.batches(5)).tensors["ids"]
