"""Callbacks: zero-shot evaluation (classification by prompts, retrieval with every caption).

The evaluation sets are the embedded scenes' held-out split (`scene_evaluation_set`) when a
`datasets.vl.val` entry is embedded, else the configured validation data: retrieval on the
`vl` entries (every caption of each image) and zero-shot classification on each labelled
`image` entry. Unusable samples are skipped and counted by the one policy of
`flava.data.sources` (`BadSample`, `SkipLog`). With several processes every one builds
the same sets and embeds every W-th batch of them (`flava.tasks.retrieval`); the embeddings are
gathered, so each process computes the metrics one process would (rank 0 logs them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from flava.config import ConfigError
from flava.config.pretraining import kind_text_length
from flava.data.sources.errors import SAMPLE_ERRORS, BadSample, SourceError
from flava.data.sources.sample import Sample
from flava.data.sources.skips import SkipLog
from flava.data.tokenizer import FlavaTokenizer
from flava.data.transforms import ImageTransform
from flava.model.flava import FlavaModel
from flava.tasks.metrics import recall_at_k, topk_accuracy
from flava.tasks.retrieval import embed_images, embed_texts
from flava.tasks.zero_shot import class_embeddings

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


def _key(task: str, name: str, metric: str) -> str:
    return f"{task}/{name}/{metric}" if name else f"{task}/{metric}"


@torch.no_grad()
def zero_shot_metrics(
    model: FlavaModel,
    data: EvaluationSet,
    tokenizer: FlavaTokenizer,
    transform: ImageTransform,
    batch_size: int = 64,
    max_length: int = 77,
) -> dict[str, float]:
    """Retrieval R@1/5/10 both ways (every caption) and zero-shot top-1/top-5 when labelled
    (under torch.distributed every process must call it: each embeds a share of the set)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, float] = {}
    try:
        images = embed_images(model, data.images, transform, batch_size, device)
        if any(data.captions):
            texts = [c for caps in data.captions for c in caps]
            owner = torch.tensor([i for i, caps in enumerate(data.captions) for _ in caps])
            text_emb = embed_texts(model, tokenizer, texts, 4 * batch_size, max_length, device)
            recalls = recall_at_k(images, text_emb, owner)
            out.update({_key("retrieval", data.name, k): v for k, v in recalls.items()})
        if data.labels is not None and data.class_names:
            classes = class_embeddings(
                model, tokenizer, data.class_names, data.templates, max_length, device
            )
            acc = topk_accuracy(images, classes, torch.tensor(data.labels))
            out.update({_key("zero_shot", data.name, k): v for k, v in acc.items()})
    finally:
        model.train(was_training)
    return out


class ZeroShotEvaluation(L.Callback):
    """Evaluates before training, every N steps (optional) and after training."""

    def __init__(
        self,
        data: EvaluationSet | Sequence[EvaluationSet],
        tokenizer: FlavaTokenizer,
        transform: ImageTransform,
        batch_size: int = 64,
        max_length: int = 77,
        every_n_steps: int | None = None,
        counts: dict[str, int] | None = None,
    ) -> None:
        self.sets = [data] if isinstance(data, EvaluationSet) else list(data)
        self.tokenizer, self.transform = tokenizer, transform
        self.batch_size, self.max_length, self.every_n_steps = batch_size, max_length, every_n_steps
        self.counts = dict(counts or {})  # set sizes, skipped samples by reason (eval/...)
        self.results: dict[str, dict[str, float]] = {}
        self.history: list[dict[str, float]] = []

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        from flava.training.sharding import gathered

        metrics: dict[str, float] = {}
        for data in self.sets:
            with gathered(pl_module):  # projections of a sharded root, outside its forward
                zero_shot = zero_shot_metrics(
                    pl_module.model.flava,
                    data,
                    self.tokenizer,
                    self.transform,
                    self.batch_size,
                    self.max_length,
                )
            metrics.update(zero_shot)
        step = trainer.global_step
        self.history.append({"step": step, **metrics})
        if trainer.is_global_zero:  # TensorBoard and CSV at any step, whatever log_every_n_steps
            for logger in trainer.loggers:
                logger.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        return metrics

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            self.results["before"] = self._evaluate(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        n = self.every_n_steps
        if n and trainer.global_step % n == 0 and trainer.global_step > 0:
            if self.history and self.history[-1]["step"] == trainer.global_step:
                return  # accumulated batches of one optimiser step
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = self.history[-1] if self.history else {}
        if last.get("step") == trainer.global_step and trainer.global_step > 0:
            self.results["after"] = {k: v for k, v in last.items() if k != "step"}  # same weights
        else:
            self.results["after"] = self._evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"results": self.results, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.results = dict(state.get("results", {}))
        self.history = list(state.get("history", []))


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
    entries: Sequence[DictConfig],
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
        source = _built(entry, image_size, "vl", i)
        for image, sample in collect(source, "vl", quota, transform, skips, _where("vl", i)):
            images.append(image)
            captions.append(list(sample.texts))
    return EvaluationSet(images, captions) if images else None


def _where(kind: str, index: int) -> str:
    return f"datasets.{kind}.val[{index}]"


def _built(entry: DictConfig, image_size: int, kind: str, index: int) -> Any:
    from flava.training.data import checked_source

    return checked_source(entry, "val", image_size, kind, f"{_where(kind, index)} ({entry.type})")


def dataset_classes(source: Any) -> tuple[list[str], str] | None:
    """Class names a source knows (class folders, a ClassLabel) and their kind, else None."""
    folders = getattr(source, "classes", None)  # raw folder names: ImageNet ids are recognised
    if folders:
        return list(folders), "image_folder"
    names = getattr(source, "class_names", None)  # e.g. a Hugging Face ClassLabel
    return (list(names), "huggingface") if names else None


def names_and_templates(
    source: Any, entry: DictConfig, ev: DictConfig
) -> tuple[list[str], list[str]] | None:
    """Class names in label order and prompt templates for a labelled image entry, or None."""
    from flava.tasks.run import read_json_list
    from flava.tasks.zero_shot import class_names_and_templates

    known = dataset_classes(source)
    if known is None:
        if not ev.class_names:
            return None
        known = (read_json_list(ev.class_names, "training.evaluation.class_names"), "list")
    z = {"class_names": ev.class_names, "templates": ev.templates}
    cfg = OmegaConf.create({"zero_shot": z, "data": {"kind": known[1]}})
    try:
        return class_names_and_templates(cfg, known[0])
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("zero_shot.", "training.evaluation.")) from None


def zero_shot_sets(
    entries: Sequence[DictConfig],
    ev: DictConfig,
    image_size: int,
    transform: ImageTransform,
    skips: SkipLog,
) -> list[EvaluationSet]:
    """One zero-shot set per labelled (non-embedded) `image` validation entry."""
    sets = []
    for i, entry in enumerate(entries):
        if entry.type == "embedded":  # scenes: the shape classes come with embedded vl data
            continue
        where = _where("image", i)
        source = _built(entry, image_size, "image", i)
        found = names_and_templates(source, entry, ev)
        if found is None:
            log.info("%s: no class names (training.evaluation.class_names): no zero-shot", where)
            continue
        names, templates = found
        got = collect(source, "image", ev.num_samples, transform, skips, where, len(names))
        if got:
            images, labels = [im for im, _ in got], [int(s.label) for _, s in got]
            sets.append(EvaluationSet(images, [], labels, names, templates, name=f"val{i}"))
    if len(sets) == 1:
        sets[0].name = ""
    return sets


def evaluation_sets(
    cfg: DictConfig, image_size: int, transform: ImageTransform
) -> tuple[list[EvaluationSet], dict[str, int]]:
    """The evaluation sets of a run and their counts (eval/... keys: sizes, skipped by reason)."""
    ev, d = cfg.training.evaluation, cfg.datasets
    vl = list(d.vl.val) if "vl" in d.selected else []
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
    if "image" in d.selected:
        for data in zero_shot_sets(list(d.image.val), ev, image_size, transform, skips):
            suffix = f"/{data.name}" if data.name else ""
            counts[f"eval/samples/zero_shot_images{suffix}"] = len(data.images)
            sets.append(data)
    counts.update({f"eval/skipped/{k}": v for k, v in sorted(skips.counts.items())})
    return sets, counts


def build_evaluation(
    cfg: DictConfig, image_size: int, tokenizer: FlavaTokenizer, transform: ImageTransform
) -> ZeroShotEvaluation | None:
    """The evaluation callback of a pretraining run, or None when disabled or nothing to use."""
    ev = cfg.training.evaluation
    if not ev.enabled:
        return None
    sets, counts = evaluation_sets(cfg, image_size, transform)
    if not sets:
        say = log.warning if counts else log.info  # counts: entries were read, all unusable
        say("evaluation: no validation images with captions or class labels %s", counts or "")
        return None
    return ZeroShotEvaluation(
        sets,
        tokenizer,
        transform,
        ev.batch_size,
        kind_text_length(cfg.datasets, "vl"),  # captions' length
        ev.every_n_steps,
        counts,
    )
