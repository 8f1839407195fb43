"""The evaluation sets of a pretraining run (built here, measured by the callback of
`flava.training.callbacks`).

The embedded scenes' held-out split (`scene_evaluation_set`) when a `datasets.vl.val` entry is
embedded, else the configured validation sources, each built by the one source factory:
retrieval on the `vl` entries (every caption of each image, `num_samples` shared evenly) and
zero-shot classification on each labelled `image` entry (class names and prompts as
`flava.zero_shot` finds them, `flava.tasks.zero_shot.prompts`). Samples are drawn in seeded
random order; unusable ones are skipped and counted by the one policy of
`flava.data.sources` (`BadSample`, `SkipLog`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from flava.config import EvaluationConfig, RunConfig, SourceConfig
from flava.data.sources import SAMPLE_ERRORS, BadSample, Sample, SkipLog, SourceError
from flava.data.sources.factory import checked_source
from flava.data.transforms import ImageTransform
from flava.objectives.kinds import Kind

log = logging.getLogger("flava")
# Candidates drawn for an evaluation set of n samples: 4 n + 64, enough to fill it when many
# samples are bad, without reading the whole of a large validation set.
_CANDIDATES_PER_SAMPLE, _EXTRA_CANDIDATES = 4, 64


@dataclass
class EvaluationSet:
    """Held-out images with all their captions, and optionally class labels for zero-shot."""

    images: list[Image.Image]
    captions: list[list[str]]
    labels: list[int] | None = None
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    name: str = ""
    """Put in the metric keys (zero_shot/<name>/top1) to tell several sets apart."""


def scene_evaluation_set(num_samples: int, image_size: int, seed: int = 0) -> EvaluationSet:
    """Distinct scenes of the embedded validation split as an evaluation set (shape classes)."""
    from flava.data.scenes import SHAPES, ZERO_SHOT_TEMPLATES, distinct_scenes

    items = distinct_scenes("val", num_samples, image_size=image_size, seed=seed)
    return EvaluationSet(
        images=[s.image for s in items],
        captions=[list(s.captions) for s in items],
        labels=[s.label for s in items],
        class_names=list(SHAPES),
        templates=list(ZERO_SHOT_TEMPLATES),
    )


def as_view(image: Image.Image, transform: ImageTransform) -> Image.Image:
    """The S x S RGB view the eval `transform` takes of `image` (and leaves as it is)."""
    pixels = transform.batch([image])["pixel_values"][0]
    mean = torch.tensor(transform.mean).view(3, 1, 1)
    std = torch.tensor(transform.std).view(3, 1, 1)
    rgb = (pixels * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return Image.fromarray(rgb.permute(1, 2, 0).numpy())


def collect(
    source: Any,
    kind: str,
    count: int,
    transform: ImageTransform,
    skips: SkipLog,
    where: str,
    num_classes: int | None = None,
) -> list[tuple[Image.Image, Sample]]:
    """Up to `count` usable samples of `kind` in seeded random order; the others go to `skips`."""
    total = len(source)
    if count <= 0 or total == 0:
        return []
    rng = np.random.default_rng(0)
    size = min(total, _CANDIDATES_PER_SAMPLE * count + _EXTRA_CANDIDATES)
    picks = rng.choice(total, size=size, replace=False)
    out: list[tuple[Image.Image, Sample]] = []
    for index in picks:
        try:
            sample = source.sample(int(index))
            decoded = sample.decoded(kind, rng)  # BadSample for an empty caption or a bad image
            _check_label(decoded.label, num_classes)
            # kept as the S x S view: large photographs stay small, the metrics are the same
            out.append((as_view(decoded.image, transform), sample))
        except SourceError:
            raise
        except SAMPLE_ERRORS as exc:
            skips.add(exc, f"{where} sample {int(index)}")
            continue
        if len(out) == count:
            break
    return out


def _check_label(label: int | None, num_classes: int | None) -> None:
    if num_classes is not None and (label is None or not 0 <= label < num_classes):
        raise BadSample("bad_label", f"label {label!r} is not one of the {num_classes} classes")


def retrieval_set(
    entries: Sequence[SourceConfig],
    count: int,
    image_size: int,
    transform: ImageTransform,
    skips: SkipLog,
) -> EvaluationSet | None:
    """Images with every caption from the `vl` validation entries (`count` shared evenly)."""
    images: list[Image.Image] = []
    captions: list[list[str]] = []
    for i, entry in enumerate(entries):
        quota = -(-(count - len(images)) // (len(entries) - i))  # the rest, shared evenly
        source = _built(entry, image_size, Kind.vl, i)
        for image, sample in collect(source, Kind.vl, quota, transform, skips, _where(Kind.vl, i)):
            images.append(image)
            captions.append(list(sample.texts))
    return EvaluationSet(images, captions) if images else None


def _where(kind: str, index: int) -> str:
    return f"datasets.{kind}.val[{index}]"


def _built(entry: SourceConfig, image_size: int, kind: str, index: int) -> Any:
    return checked_source(entry, "val", image_size, kind, f"{_where(kind, index)} ({entry.type})")


def dataset_classes(source: Any) -> tuple[list[str], str] | None:
    """Class names a source knows (class folders, a ClassLabel) and their kind, else None."""
    folders = getattr(source, "classes", None)  # raw folder names: ImageNet ids are recognised
    if folders:
        return list(folders), "image_folder"
    names = getattr(source, "class_names", None)  # e.g. a Hugging Face ClassLabel
    return (list(names), "huggingface") if names else None


def names_and_templates(source: Any, ev: EvaluationConfig) -> tuple[list[str], list[str]] | None:
    """Class names in label order and prompt templates for a labelled image source (`ev`:
    training.evaluation), or None when neither the data nor the settings name its classes."""
    from flava.tasks.run import read_json_list
    from flava.tasks.zero_shot import prompts

    known = dataset_classes(source)
    if known is None:
        if not ev.class_names:
            return None
        known = (read_json_list(ev.class_names, "training.evaluation.class_names"), "list")
    return prompts(known[0], known[1], ev.class_names, ev.templates, "training.evaluation")


def zero_shot_sets(
    entries: Sequence[SourceConfig],
    ev: EvaluationConfig,
    image_size: int,
    transform: ImageTransform,
    skips: SkipLog,
) -> list[EvaluationSet]:
    """One zero-shot set per labelled (non-embedded) `image` validation entry."""
    sets = []
    for i, entry in enumerate(entries):
        if entry.type == "embedded":  # scenes: the shape classes come with embedded vl data
            continue
        where = _where(Kind.image, i)
        source = _built(entry, image_size, Kind.image, i)
        found = names_and_templates(source, ev)
        if found is None:
            log.info("%s: no class names (training.evaluation.class_names): no zero-shot", where)
            continue
        names, templates = found
        got = collect(source, Kind.image, ev.num_samples, transform, skips, where, len(names))
        if got:
            # (collect keeps samples of one of the classes only: each has its label)
            images = [im for im, s in got if s.label is not None]
            labels = [s.label for _, s in got if s.label is not None]
            sets.append(EvaluationSet(images, [], labels, names, templates, name=f"val{i}"))
    if len(sets) == 1:
        sets[0].name = ""
    return sets


def evaluation_sets(
    cfg: RunConfig, image_size: int, transform: ImageTransform
) -> tuple[list[EvaluationSet], dict[str, int]]:
    """The evaluation sets of a run and their counts (eval/... keys: sizes, skipped by reason)."""
    ev, d = cfg.training.evaluation, cfg.datasets
    vl = list(d.vl.val) if Kind.vl in d.selected else []
    if any(e.type == "embedded" for e in vl):  # the demo: held-out scenes, exactly as before
        return [scene_evaluation_set(ev.num_samples, image_size, vl[0].seed)], {}
    skips = SkipLog()
    sets: list[EvaluationSet] = []
    counts: dict[str, int] = {}
    pairs = retrieval_set(vl, ev.num_samples, image_size, transform, skips) if vl else None
    if pairs is not None:
        sets.append(pairs)
        counts["eval/samples/retrieval_images"] = len(pairs.images)
        counts["eval/samples/retrieval_captions"] = sum(len(c) for c in pairs.captions)
    if Kind.image in d.selected:
        for data in zero_shot_sets(list(d.image.val), ev, image_size, transform, skips):
            suffix = f"/{data.name}" if data.name else ""
            counts[f"eval/samples/zero_shot_images{suffix}"] = len(data.images)
            sets.append(data)
    counts.update({f"eval/skipped/{k}": v for k, v in sorted(skips.counts.items())})
    return sets, counts
