"""Procedurally generated shape scenes: an embedded, download-free vision-language dataset.

Every sample is a small RGB image with one or two coloured shapes on a muted textured background,
together with several captions, a shape class label, a question / answer pair, and a statement
that is or is not entailed by the scene. Generation is pure PIL + numpy and deterministic per
``(seed, split, index)``; the train / val / test splits use disjoint scene descriptors, so the
held-out splits test generalisation to unseen combinations of attributes.

The same sample serves every task: ``image`` alone (image-only), ``captions`` alone (text-only),
``(image, captions)`` (retrieval / contrastive), ``(image, label)`` (classification, classes in
``SHAPES``), ``(image, question, answer)`` (VQA-like, answers in ``ANSWERS``) and
``(captions[0], statement, entailed)`` (sentence-pair entailment; ``captions[0]`` always mentions
every attribute of the scene, so the statement can be judged from it alone).

The package, one idea a module: `attributes` (what a scene holds, the `Scene` record),
`drawing` (the image), `text` (captions, questions, statements), `generate` (one scene from
one generator) and `dataset` (split partitions, `SceneDataset`, its cache, retrieval sets).
"""

from __future__ import annotations

from flava.data.scenes.attributes import (
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    SceneObject,
)
from flava.data.scenes.dataset import (
    MAX_DISTINCT_SCENES,
    SCENE_CACHE_BYTES,
    SceneDataset,
    distinct_scenes,
)
from flava.data.scenes.drawing import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from flava.data.scenes.generate import generate_scene
from flava.data.scenes.text import (
    ANSWERS,
    COLOUR_SYNONYMS,
    NUM_CAPTIONS,
    RELATION_PHRASES,
    SHAPE_SYNONYMS,
    SIZE_SYNONYMS,
    ZERO_SHOT_TEMPLATES,
)

__all__ = [
    "ANSWERS",
    "BACKGROUNDS",
    "COLOURS",
    "COLOUR_RGB",
    "COLOUR_SYNONYMS",
    "MAX_DISTINCT_SCENES",
    "MAX_IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "NUM_CAPTIONS",
    "RELATIONS",
    "RELATION_PHRASES",
    "SCENE_CACHE_BYTES",
    "SHAPES",
    "SHAPE_SYNONYMS",
    "SIZES",
    "SIZE_SYNONYMS",
    "SPLITS",
    "ZERO_SHOT_TEMPLATES",
    "Scene",
    "SceneDataset",
    "SceneObject",
    "distinct_scenes",
    "generate_scene",
]
