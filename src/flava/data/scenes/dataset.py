"""The scenes as a dataset: disjoint train / val / test partitions of the scene descriptors,
a deterministic random-access `SceneDataset` with a per-process cache of drawn scenes, and
retrieval sets of distinct scenes."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from flava.data.scenes.attributes import SPLITS, Scene
from flava.data.scenes.generate import check_image_size, check_objects, generate_accepted

_DISTINCT_DRAWS = 4  # draws per scene that distinct_scenes may look through
# A held-out split holds about 8,500 descriptors (10% of 85,000), half of its draws come from the
# ~60 one-object ones: 4 draws per scene reliably give this many distinct scenes.
MAX_DISTINCT_SCENES = 2000
# Drawn scenes kept per process (each loader worker has its own), by memory: a run draws each
# training scene a few times (several epochs, and the image, text and vl streams of one split),
# and drawing costs more than a batch's tokenising and transforms together. A 64 px scene takes
# about 20 KiB (12 KiB of pixels, the rest its texts and objects): 384 MiB hold about 19,600.
SCENE_CACHE_BYTES = 384 * 2**20
_SCENE_OVERHEAD_BYTES = 8 * 2**10


def _split_of(seed: int, descriptor: tuple) -> str:
    """Deterministically assign a scene descriptor to the train, val or test partition."""
    digest = hashlib.blake2b(repr((seed, descriptor)).encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "little") % 1000
    return "val" if bucket < 100 else "test" if bucket < 200 else "train"


class SceneCache:
    """Least-recently-used scenes, bounded by their estimated memory."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.scenes: OrderedDict[tuple, Scene] = OrderedDict()

    @staticmethod
    def cost(scene: Scene) -> int:
        pixels = scene.image.width * scene.image.height * len(scene.image.getbands())
        return pixels + _SCENE_OVERHEAD_BYTES

    def get(self, key: tuple) -> Scene | None:
        scene = self.scenes.get(key)
        if scene is not None:
            self.scenes.move_to_end(key)
        return scene

    def put(self, key: tuple, scene: Scene) -> None:
        self.scenes[key] = scene
        self.used += self.cost(scene)
        while self.used > self.budget:
            self.used -= self.cost(self.scenes.popitem(last=False)[1])


_CACHE = SceneCache(SCENE_CACHE_BYTES)


class SceneDataset(torch.utils.data.Dataset):
    """Deterministic, random-access dataset of ``size`` generated scenes for one split."""

    def __init__(
        self,
        split: str = "train",
        size: int = 10_000,
        image_size: int = 64,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 2,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size < 1:
            raise ValueError(f"size must be a positive number of scenes, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        check_image_size(image_size)
        check_objects(min_objects, max_objects)
        self.split, self.size, self.image_size, self.seed = split, size, image_size, seed
        self.min_objects, self.max_objects = min_objects, max_objects
        self._split_id = SPLITS.index(split)

    def __len__(self) -> int:
        """Number of scenes."""
        return self.size

    def rng(self, index: int) -> np.random.Generator:
        """The generator of scene ``index``: a child of the ``(seed, split)`` seed sequence."""
        sequence = np.random.SeedSequence(self.seed, spawn_key=(self._split_id, index))
        return np.random.default_rng(sequence)

    def accepts(self, descriptor: tuple) -> bool:
        """Whether a canonical scene descriptor belongs to this dataset's split partition."""
        return _split_of(self.seed, descriptor) == self.split

    def __getitem__(self, index: int) -> Scene:
        """Scene ``index``, identical whatever the access order or worker."""
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} scenes")
        key = (self.seed, self.split, self.image_size, self.min_objects, self.max_objects, index)
        scene = _CACHE.get(key)
        if scene is None:
            scene = self.generate(index)
            _CACHE.put(key, scene)
        return scene

    def generate(self, index: int) -> Scene:
        """Draw scene ``index`` (0 <= index < size) afresh: what indexing returns, without the
        per-process cache (``SCENE_CACHE_BYTES``) that indexing keeps."""
        return generate_accepted(
            self.rng(index), self.image_size, self.min_objects, self.max_objects, self.accepts
        )


def distinct_scenes(split: str, count: int, image_size: int = 64, seed: int = 0) -> list[Scene]:
    """The first ``count`` scenes of ``split`` whose descriptors all differ (retrieval sets).

    A split draws descriptors with repetition, and one-object descriptors are few (about 60 per
    held-out split), so a few hundred consecutive scenes repeat some descriptions exactly. Two
    such scenes fit each other's captions equally well, which leaves retrieval without a single
    right answer; a retrieval set keeps only the first scene of each descriptor.
    """
    if not 1 <= count <= MAX_DISTINCT_SCENES:
        raise ValueError(
            f"a retrieval set holds 1 to {MAX_DISTINCT_SCENES} distinct scenes, got {count}"
        )
    dataset = SceneDataset(
        split=split, size=_DISTINCT_DRAWS * count, image_size=image_size, seed=seed
    )
    scenes: list[Scene] = []
    seen: set[tuple] = set()
    for index in range(len(dataset)):
        scene = dataset[index]
        if scene.descriptor not in seen:
            seen.add(scene.descriptor)
            scenes.append(scene)
            if len(scenes) == count:
                return scenes
    raise ValueError(
        f"the {split} split gave only {len(scenes)} distinct scenes in {len(dataset)} draws; "
        f"ask for fewer than {count}"
    )
