"""Callbacks: zero-shot evaluation (classification by prompts, retrieval with every caption)
before, during and after a pretraining run.

The evaluation sets are built by `flava.tasks.eval_sets` from the run's validation sources.
With several processes every one builds the same sets and embeds every W-th batch of them
(`flava.tasks.retrieval`); the embeddings are gathered, so each process computes the metrics
one process would (rank 0 logs them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from flava.config import RunConfig
from flava.config.pretraining import kind_text_length
from flava.data.tokenizer import FlavaTokenizer
from flava.data.transforms import ImageTransform
from flava.model.flava import FlavaModel
from flava.objectives.kinds import Kind
from flava.tasks.eval_sets import EvaluationSet, evaluation_sets
from flava.tasks.metrics import recall_at_k, topk_accuracy
from flava.tasks.retrieval import embed_images, embed_texts
from flava.tasks.zero_shot import class_embeddings

log = logging.getLogger("flava")


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
        from flava.training.module import FlavaPretrainingModule
        from flava.training.sharding import gathered

        if not isinstance(pl_module, FlavaPretrainingModule):
            name = type(pl_module).__name__
            raise TypeError(f"zero-shot evaluation needs a FlavaPretrainingModule, not {name}")
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


def build_evaluation(
    cfg: RunConfig, image_size: int, tokenizer: FlavaTokenizer, transform: ImageTransform
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
        kind_text_length(cfg.datasets, Kind.vl),  # captions' length
        ev.every_n_steps,
        counts,
    )
