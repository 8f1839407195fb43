"""Callbacks: zero-shot evaluation (classification by prompts, retrieval with every caption)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from PIL import Image

from flava.data.tokenizer import FlavaTokenizer
from flava.data.transforms import ImageTransform
from flava.model.flava import FlavaModel
from flava.tasks.retrieval import embed_images, embed_texts, recall_at_k
from flava.tasks.zero_shot import class_embeddings, topk_accuracy


@dataclass
class EvaluationSet:
    """Held-out images with all their captions, and optionally class labels for zero-shot."""

    images: list[Image.Image]
    captions: list[list[str]]
    labels: list[int] | None = None
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)


@torch.no_grad()
def zero_shot_metrics(
    model: FlavaModel,
    data: EvaluationSet,
    tokenizer: FlavaTokenizer,
    transform: ImageTransform,
    batch_size: int = 64,
    max_length: int = 77,
) -> dict[str, float]:
    """Retrieval R@1/5/10 both ways (every caption) and zero-shot top-1/top-5 when labelled."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        images = embed_images(model, data.images, transform, batch_size, device)
        texts = [c for caps in data.captions for c in caps]
        owner = torch.tensor([i for i, caps in enumerate(data.captions) for _ in caps])
        text_emb = embed_texts(model, tokenizer, texts, 4 * batch_size, max_length, device)
        out = {f"retrieval/{k}": v for k, v in recall_at_k(images, text_emb, owner).items()}
        if data.labels is not None and data.class_names:
            classes = class_embeddings(
                model, tokenizer, data.class_names, data.templates, max_length, device
            )
            acc = topk_accuracy(images, classes, torch.tensor(data.labels))
            out.update({f"zero_shot/{k}": v for k, v in acc.items()})
    finally:
        model.train(was_training)
    return out


class ZeroShotEvaluation(L.Callback):
    """Evaluates before training, every N steps (optional) and after training."""

    def __init__(
        self,
        data: EvaluationSet,
        tokenizer: FlavaTokenizer,
        transform: ImageTransform,
        batch_size: int = 64,
        max_length: int = 77,
        every_n_steps: int | None = None,
    ) -> None:
        self.data, self.tokenizer, self.transform = data, tokenizer, transform
        self.batch_size, self.max_length, self.every_n_steps = batch_size, max_length, every_n_steps
        self.results: dict[str, dict[str, float]] = {}
        self.history: list[dict[str, float]] = []

    def _evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        return zero_shot_metrics(
            pl_module.model.flava,
            self.data,
            self.tokenizer,
            self.transform,
            self.batch_size,
            self.max_length,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            self.results["before"] = self._evaluate(pl_module)
            self.history.append({"step": 0, **self.results["before"]})

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        n = self.every_n_steps
        if n and trainer.global_step % n == 0 and trainer.global_step > 0:
            metrics = self._evaluate(pl_module)
            self.history.append({"step": trainer.global_step, **metrics})
            pl_module.log_dict({f"eval/{k}": v for k, v in metrics.items()}, rank_zero_only=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.results["after"] = self._evaluate(pl_module)
        self.history.append({"step": trainer.global_step, **self.results["after"]})

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
