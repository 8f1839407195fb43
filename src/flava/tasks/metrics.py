"""Task metrics: fine-tuning's torchmetrics, the majority baseline, retrieval R@k, top-k accuracy.

Fine-tuning (paper section 5) reports accuracy / F1 / MCC / AUROC for classification, Pearson /
Spearman for regression (STS-B) and VQA soft accuracy min(#humans / 3, 1); zero-shot retrieval
reports R@k both ways with every caption of every image (table 4); zero-shot classification
reports top-k accuracy of the nearest class embedding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

# ---------------------------------------------------------------------------------------------
# fine-tuning


class VQAAccuracy(torchmetrics.Metric):
    """VQA soft accuracy: mean of min(#humans who gave the predicted answer / 3, 1)."""

    # update(preds, target): preds are logits [B, A] (argmax taken) or answer indices [B]; target
    # holds each answer's soft score [B, A] (0 for answers no human gave).

    higher_is_better = True
    full_state_update = False
    score: torch.Tensor  # summed soft accuracy (a metric state)
    total: torch.Tensor  # predictions counted (a metric state)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "score", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions and soft answer scores."""
        index = preds.argmax(dim=-1) if preds.ndim == 2 else preds
        picked = target.gather(1, index.long()[:, None]).squeeze(1).clamp(max=1.0)
        self.score += picked.double().sum()
        self.total += picked.numel()

    def compute(self) -> torch.Tensor:
        """Mean soft accuracy in [0, 1]."""
        return (self.score / self.total.clamp(min=1)).float()


class TaskMetrics(nn.Module):
    """The task's torchmetrics fed from model outputs: logits [B, C] (regression: [B, 1])."""

    def __init__(self, names: list[str], task_type: str, num_outputs: int) -> None:
        super().__init__()
        self.task_type, self.num_outputs = task_type, num_outputs
        self.metrics = nn.ModuleDict({n: self._build(n) for n in names})

    def _metrics(self) -> list[tuple[str, torchmetrics.Metric]]:
        """(name, metric) of every metric, in order."""
        return [(n, m) for n, m in self.metrics.items() if isinstance(m, torchmetrics.Metric)]

    def _build(self, name: str) -> torchmetrics.Metric:
        c = self.num_outputs
        binary = c == 2
        tm = torchmetrics.classification
        if name == "accuracy":
            return tm.MulticlassAccuracy(num_classes=c, average="micro")
        if name == "f1":
            return tm.BinaryF1Score() if binary else tm.MulticlassF1Score(c, average="macro")
        if name == "mcc":
            return tm.BinaryMatthewsCorrCoef() if binary else tm.MulticlassMatthewsCorrCoef(c)
        if name == "auroc":
            return tm.BinaryAUROC() if binary else tm.MulticlassAUROC(c)
        if name == "pearson":
            return torchmetrics.PearsonCorrCoef()
        if name == "spearman":
            return torchmetrics.SpearmanCorrCoef()
        if name == "vqa_accuracy":
            return VQAAccuracy()
        raise ValueError(f"unknown metric {name!r}")

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch."""
        logits = logits.float()
        if self.task_type == "regression":
            for _, m in self._metrics():
                m.update(logits[:, 0], targets.float())
            return
        if self.task_type == "vqa":
            for _, m in self._metrics():
                m.update(logits, targets.float())
            return
        probs = logits.softmax(dim=-1)
        preds = probs.argmax(dim=-1)
        for name, m in self._metrics():
            if name == "accuracy" or (name in ("f1", "mcc") and self.num_outputs != 2):
                m.update(preds, targets)
            elif name == "auroc" and self.num_outputs != 2:
                m.update(probs, targets)
            else:  # binary f1 / mcc / auroc on the positive class probability
                m.update(probs[:, 1], targets)

    def compute(self) -> dict[str, float]:
        """{metric name: value}."""
        return {name: float(m.compute()) for name, m in self._metrics()}

    def reset(self) -> None:
        """Clear the accumulated state."""
        for _, m in self._metrics():
            m.reset()


def majority_baseline(
    train: Any, vals: list[tuple[str, Any]], task_type: str, limit: int = 8192
) -> dict[str, float]:
    """Accuracy (VQA: soft accuracy) of always giving the most frequent training target."""
    # the most frequent target is counted over the first `limit` training examples
    if task_type == "regression" or len(train) == 0:
        return {}
    n = min(len(train), limit)
    if task_type == "vqa":
        counts: Counter[int] = Counter()
        for i in range(n):
            scores = train.target(i)
            if scores:
                counts[max(scores, key=scores.get)] += 1
        if not counts:
            return {}
        top, name = counts.most_common(1)[0][0], "vqa_accuracy"
    else:
        top = Counter(int(train.target(i)) for i in range(n)).most_common(1)[0][0]
        name = "accuracy"
    out = {}
    for prefix, ds in vals:
        if len(ds):
            hits = sum(_score(ds.target(i), top, task_type) for i in range(len(ds)))
            out[f"{prefix}/{name}"] = hits / len(ds)
    return out


def _score(target: Any, answer: int, task_type: str) -> float:
    """What always answering `answer` scores on one example: its soft score (VQA: `target` maps
    answers to scores), else 1 for the right class."""
    if task_type == "vqa":
        return float(target.get(answer, 0.0))
    return float(int(target) == answer)


# ---------------------------------------------------------------------------------------------
# zero-shot retrieval and classification


def recall_at_k(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@k both ways; `text_to_image[t]` is the image index of caption t.

    Keys: "image_to_text/R@k" and "text_to_image/R@k" (fractions in [0, 1]).
    """
    n_images, n_texts = image_embeddings.shape[0], text_embeddings.shape[0]
    if text_to_image.shape != (n_texts,):
        raise ValueError(
            f"text_to_image must have shape ({n_texts},), got {tuple(text_to_image.shape)}"
        )
    if n_texts and (text_to_image.min() < 0 or text_to_image.max() >= n_images):
        raise ValueError("text_to_image holds an image index out of range")
    sim = (
        F.normalize(image_embeddings.float(), dim=-1)
        @ F.normalize(text_embeddings.float(), dim=-1).T
    )
    owner = text_to_image.to(sim.device)
    out: dict[str, float] = {}
    # image -> text: rank of the best-ranked own caption
    own = owner[None, :] == torch.arange(n_images, device=sim.device)[:, None]  # [I, T]
    best_own = sim.masked_fill(~own, float("-inf")).max(dim=1).values  # [I]
    rank_i2t = (sim > best_own[:, None]).sum(dim=1)  # texts strictly better than the best own one
    # text -> image: rank of the caption's own image
    sim_t = sim.T  # [T, I]
    own_score = sim_t.gather(1, owner[:, None])  # [T, 1]
    rank_t2i = (sim_t > own_score).sum(dim=1)
    for k in ks:
        out[f"image_to_text/R@{k}"] = (rank_i2t < k).float().mean().item()
        out[f"text_to_image/R@{k}"] = (rank_t2i < k).float().mean().item()
    return out


def topk_accuracy(
    image_embeddings: torch.Tensor,
    class_embeds: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Top-k accuracy of nearest-class assignment; keys "top1", "top5" ..."""
    logits = F.normalize(image_embeddings.float(), dim=-1) @ class_embeds.float().T  # [N, C]
    out = {}
    for k in ks:
        k_eff = min(k, logits.shape[1])
        top = logits.topk(k_eff, dim=1).indices
        out[f"top{k}"] = (top == labels[:, None]).any(dim=1).float().mean().item()
    return out
