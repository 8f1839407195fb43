"""Tests for the procedurally generated shape-scene dataset."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from flava.data.scenes import (
    ANSWERS,
    BACKGROUNDS,
    COLOUR_RGB,
    COLOUR_SYNONYMS,
    COLOURS,
    NUM_CAPTIONS,
    RELATION_PHRASES,
    SHAPE_SYNONYMS,
    SHAPES,
    SIZE_SYNONYMS,
    ZERO_SHOT_TEMPLATES,
    Scene,
    SceneDataset,
    distinct_scenes,
    generate_scene,
)
from flava.data.scenes.dataset import SceneCache

INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@pytest.fixture(scope="module")
def train_scenes() -> list[Scene]:
    """500 training scenes shared by the statistical tests."""
    dataset = SceneDataset("train", size=500, seed=0)
    return [dataset[i] for i in range(len(dataset))]


def mentions(text: str, phrases: tuple[str, ...]) -> bool:
    """Whether ``text`` contains any of ``phrases`` as whole words."""
    return any(re.search(rf"\b{re.escape(p)}\b", text) for p in phrases)


def centre(bbox: tuple[float, float, float, float]) -> tuple[float, float]:
    """Centre of a bbox."""
    return (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2


def relation_of(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where point ``a`` is relative to point ``b`` (y down)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def test_vocabularies() -> None:
    assert len(SHAPES) >= 6 and len(set(SHAPES)) == len(SHAPES)
    assert len(COLOURS) >= 7 and set(COLOUR_RGB) == set(COLOURS)
    assert len(BACKGROUNDS) >= 4
    assert len(set(ANSWERS)) == len(ANSWERS)
    assert {"yes", "no", "one", "two"} <= set(ANSWERS)
    assert set(SHAPES) | set(COLOURS) | set(BACKGROUNDS) <= set(ANSWERS)
    rgb = np.array(list(COLOUR_RGB.values()), dtype=float)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert distances[~np.eye(len(rgb), dtype=bool)].min() > 100  # well separated colours
    for template in ZERO_SHOT_TEMPLATES:
        assert template.count("{}") == 1 and template.format("star").islower()


def test_determinism() -> None:
    a, b = SceneDataset("train", 50, seed=3), SceneDataset("train", 50, seed=3)
    for index in (0, 7, 49):
        first, second = a[index], b.generate(index)  # cached (or drawn now) against drawn again
        assert first.image.tobytes() == second.image.tobytes()
        assert first.captions == second.captions
        assert (first.question, first.answer, first.statement) == (
            second.question,
            second.answer,
            second.statement,
        )
        assert first.objects == second.objects
    assert a[0].image.tobytes() != a[1].image.tobytes()
    assert a[0].image.tobytes() != SceneDataset("train", 50, seed=4)[0].image.tobytes()
    assert a[0].image.tobytes() != SceneDataset("val", 50, seed=3)[0].image.tobytes()
    assert a[-1].image.tobytes() == a[49].image.tobytes()


def test_random_access_order_independent() -> None:
    dataset = SceneDataset("val", 40, seed=1)
    forward = [dataset[i].image.tobytes() for i in range(40)]
    fresh = SceneDataset("val", 40, seed=1)
    backward = [fresh.generate(i).image.tobytes() for i in reversed(range(40))][::-1]
    assert forward == backward
    assert len(set(forward)) == 40


def test_dataloader_workers_match_direct_access() -> None:
    dataset = SceneDataset("test", 16, seed=2)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, num_workers=2, collate_fn=lambda batch: batch
    )
    loaded = [scene for batch in loader for scene in batch]
    assert [s.image.tobytes() for s in loaded] == [dataset[i].image.tobytes() for i in range(16)]


@pytest.mark.slow
def test_splits_disjoint_by_descriptor() -> None:
    train = SceneDataset("train", 2000, seed=5)
    train_descriptors = {train[i].descriptor for i in range(2000)}
    assert all(train.accepts(d) for d in train_descriptors)
    for split in ("val", "test"):
        held_out = SceneDataset(split, 300, seed=5)
        descriptors = {held_out[i].descriptor for i in range(300)}
        assert not descriptors & train_descriptors
        # The partition itself excludes them from every train scene of this seed.
        assert not any(train.accepts(d) for d in descriptors)
        assert all(held_out.accepts(d) for d in descriptors)
    val = SceneDataset("val", 300, seed=5)
    test = SceneDataset("test", 300, seed=5)
    assert not {val[i].descriptor for i in range(300)} & {test[i].descriptor for i in range(300)}


def test_descriptor_is_order_canonical() -> None:
    scene = next(
        s for s in (generate_scene(np.random.default_rng(i)) for i in range(50)) if s.relation
    )
    swapped = Scene(
        image=scene.image,
        captions=scene.captions,
        label=scene.label,
        question=scene.question,
        answer=scene.answer,
        statement=scene.statement,
        entailed=scene.entailed,
        objects=scene.objects[::-1],
        background=scene.background,
        relation=INVERSE[scene.relation],
    )
    assert swapped.descriptor == scene.descriptor


def test_captions_identify_the_scene(train_scenes: list[Scene]) -> None:
    with_size = with_background = total = 0
    for scene in train_scenes:
        assert len(scene.captions) == NUM_CAPTIONS == len(set(scene.captions))
        for caption in scene.captions:
            assert re.fullmatch(r"[a-z :]+", caption), caption
            assert "  " not in caption and caption == caption.strip()
            for obj in scene.objects:
                assert mentions(caption, COLOUR_SYNONYMS[obj.colour]), (caption, obj)
                assert mentions(caption, SHAPE_SYNONYMS[obj.shape]), (caption, obj)
            if scene.relation is not None:
                a, b = scene.objects
                expected = [
                    f"{s} {p} a"
                    for obj, rel in ((a, scene.relation), (b, INVERSE[scene.relation]))
                    for s in SHAPE_SYNONYMS[obj.shape]
                    for p in RELATION_PHRASES[rel]
                ]
                assert any(e in caption for e in expected), (caption, scene.relation)
            total += 1
            with_size += all(mentions(caption, SIZE_SYNONYMS[o.size]) for o in scene.objects)
            with_background += mentions(caption, ("background", "stripes", "dots", "pattern",
                                                  "checkerboard", "gradient"))  # fmt: skip
        first = scene.captions[0]
        assert all(mentions(first, SIZE_SYNONYMS[o.size]) for o in scene.objects)
    assert with_size / total > 0.6 and with_background / total > 0.6


def test_questions_and_answers(train_scenes: list[Scene]) -> None:
    answers = [s.answer for s in train_scenes]
    assert set(answers) <= set(ANSWERS)
    assert len(set(answers)) > 15  # many question types and answers occur
    yes_no = [a for a in answers if a in ("yes", "no")]
    assert len(yes_no) > 50 and 0.35 < yes_no.count("yes") / len(yes_no) < 0.65
    for scene in train_scenes:
        assert scene.question.endswith("?") and scene.question.islower()
        by_shape = {o.shape: o for o in scene.objects}
        by_colour = {o.colour: o for o in scene.objects}
        if scene.question.startswith("how many"):
            assert scene.answer == ("one", "two")[len(scene.objects) - 1]
        if m := re.fullmatch(r"what colour is the (\w+)\?", scene.question):
            assert scene.answer == by_shape[m[1]].colour
        if m := re.fullmatch(r"what shape is the (\w+) object\?", scene.question):
            assert scene.answer == by_colour[m[1]].shape
        if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", scene.question):
            present = (m[1], m[2]) in {(o.colour, o.shape) for o in scene.objects}
            assert scene.answer == ("yes" if present else "no")


def test_statements_balanced_and_correct(train_scenes: list[Scene]) -> None:
    entailed = [s.entailed for s in train_scenes]
    assert 0.42 < sum(entailed) / len(entailed) < 0.58
    for scene in train_scenes:
        assert scene.statement.islower() and isinstance(scene.entailed, bool)
        by_shape = {o.shape: o for o in scene.objects}
        if m := re.fullmatch(r"the (\w+) is (\w+)", scene.statement):
            if m[1] in SHAPES and m[2] in COLOURS:
                assert scene.entailed == (by_shape[m[1]].colour == m[2])
        if scene.statement.startswith("there is one shape"):
            assert scene.entailed == (len(scene.objects) == 1)


def test_labels_and_objects(train_scenes: list[Scene]) -> None:
    counts = {1: 0, 2: 0}
    for scene in train_scenes:
        counts[len(scene.objects)] += 1
        sides = [max(o.bbox[2] - o.bbox[0], o.bbox[3] - o.bbox[1]) for o in scene.objects]
        assert scene.label == SHAPES.index(scene.objects[int(np.argmax(sides))].shape)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        if len(scene.objects) == 2:
            a, b = scene.objects
            assert len({a.shape, b.shape}) == 2 and len({a.colour, b.colour}) == 2
            overlap_x = min(a.bbox[2], b.bbox[2]) > max(a.bbox[0], b.bbox[0])
            overlap_y = min(a.bbox[3], b.bbox[3]) > max(a.bbox[1], b.bbox[1])
            assert not (overlap_x and overlap_y)
            assert relation_of(centre(a.bbox), centre(b.bbox)) == scene.relation
            if a.size != b.size:
                assert scene.objects[scene.label != SHAPES.index(a.shape)].size == "large"
        else:
            assert scene.relation is None
    assert counts[1] > 150 and counts[2] > 150
    assert {s.label for s in train_scenes} == set(range(len(SHAPES)))


def test_objects_are_visible(train_scenes: list[Scene]) -> None:
    for scene in train_scenes[:200]:
        pixels = np.asarray(scene.image, dtype=float)
        background = np.median(pixels.reshape(-1, 3), axis=0)
        for obj in scene.objects:
            x, y = centre(obj.bbox)
            pixel = pixels[int(y), int(x)]
            assert np.abs(pixel - COLOUR_RGB[obj.colour]).max() < 30, (obj, pixel)
            assert np.linalg.norm(pixel - background) > 80


@pytest.mark.parametrize("image_size", [32, 64, 100, 224])
def test_image_format(image_size: int) -> None:
    dataset = SceneDataset("train", 10, image_size=image_size)
    for i in range(3):
        image = dataset[i].image
        assert image.mode == "RGB" and image.size == (image_size, image_size)


def test_object_count_range() -> None:
    single = SceneDataset("train", 30, min_objects=1, max_objects=1)
    double = SceneDataset("val", 30, min_objects=2, max_objects=2)
    assert all(len(single[i].objects) == 1 for i in range(30))
    assert all(len(double[i].objects) == 2 for i in range(30))


def test_generate_scene() -> None:
    first = generate_scene(np.random.default_rng(11), image_size=48)
    second = generate_scene(np.random.default_rng(11), image_size=48)
    assert first.image.size == (48, 48) and first.image.tobytes() == second.image.tobytes()
    assert first.captions == second.captions


def test_generation_is_fast() -> None:
    dataset = SceneDataset("train", 300)
    dataset.generate(0)
    start = time.perf_counter()
    for i in range(300):
        dataset.generate(i)  # drawing, not the cache
    assert (time.perf_counter() - start) / 300 < 0.01  # ~0.5 ms in practice; lenient for CI


def test_indexing_draws_each_scene_once_per_process() -> None:
    dataset = SceneDataset("test", 30, seed=5)
    first = [dataset[i] for i in range(30)]
    again = SceneDataset("test", 30, seed=5)  # another source of the same split and seed
    assert all(again[i] is first[i] for i in range(30))
    assert dataset[3].image.tobytes() == dataset.generate(3).image.tobytes()
    assert SceneDataset("test", 30, seed=6)[3] is not first[3]
    assert SceneDataset("test", 30, seed=5, image_size=48)[3].image.size == (48, 48)


def test_scene_cache_keeps_its_byte_budget() -> None:
    dataset = SceneDataset("train", 10, seed=0)
    one = SceneCache.cost(dataset.generate(0))
    assert 64 * 64 * 3 < one < 3 * 64 * 64 * 3
    cache = SceneCache(budget=3 * one)  # three 64 px scenes
    for i in range(5):
        cache.put(("k", i), dataset.generate(i))
    assert cache.used == 3 * one and list(cache.scenes) == [("k", 2), ("k", 3), ("k", 4)]
    assert cache.get(("k", 0)) is None and cache.get(("k", 2)) is not None
    cache.put(("k", 5), dataset.generate(5))  # ("k", 2) was used last: ("k", 3) goes
    assert list(cache.scenes) == [("k", 4), ("k", 2), ("k", 5)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split": "dev"},
        {"size": 0},
        {"image_size": 8},
        {"image_size": 4096},
        {"seed": -1},
        {"min_objects": 0},
        {"max_objects": 3},
        {"min_objects": 2, "max_objects": 1},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SceneDataset(**kwargs)


def test_bad_generate_arguments_and_index() -> None:
    with pytest.raises(ValueError):
        generate_scene(np.random.default_rng(0), image_size=16)
    with pytest.raises(ValueError):
        generate_scene(np.random.default_rng(0), min_objects=3, max_objects=3)
    with pytest.raises(IndexError):
        SceneDataset("train", 5)[5]


def test_distinct_scenes_never_repeat_a_description() -> None:
    plain = SceneDataset("val", 200, seed=0)
    repeated = [plain[i].descriptor for i in range(200)]
    assert len(set(repeated)) < 200  # consecutive scenes do repeat descriptions
    scenes = distinct_scenes("val", 200, seed=0)
    assert len(scenes) == 200 and len({s.descriptor for s in scenes}) == 200
    assert scenes[0].image.tobytes() == plain[0].image.tobytes()  # the first of each kept
    assert all(plain.accepts(s.descriptor) for s in scenes)
    again = distinct_scenes("val", 200, seed=0)
    assert [s.captions for s in again] == [s.captions for s in scenes]
    with pytest.raises(ValueError, match="1 to 2000 distinct scenes"):
        distinct_scenes("val", 0)
    with pytest.raises(ValueError, match="1 to 2000 distinct scenes"):
        distinct_scenes("val", 2001)
    with pytest.raises(ValueError, match="split must be one of"):
        distinct_scenes("validation", 4)
