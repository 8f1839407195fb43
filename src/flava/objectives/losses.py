"""The loss functions of FLAVA's five objectives (paper section 3.2).

Global contrastive loss gathers embeddings from every process with gradients flowing back
through the gather, but computes only the local rows of the logits, so memory stays linear in
the global batch. Masked prediction heads run only on the masked positions.

Data parallelism (DDP, FSDP) averages the gradients of the W processes, so a loss that is a mean
over the process's own items matches one process on the global batch only when every process
holds the same number of items. Masked-token losses (MIM, MLM, MMM-image, MMM-text) do not: the
number of masked tokens differs per process, and MMM runs on the matched pairs only, whose number
differs too. `masked_prediction_loss` therefore normalises by the global count through
`global_mean(total, count)`: each process returns `sum of its token losses / global count * W`,
where the global count is all-reduced (SUM, no gradient) over the processes. The mean over
processes of these per-process losses, and DDP's average of their gradients, then equal the mean
over all masked tokens of the global batch exactly. On one process it is the plain mean. The value
one process logs is its share of the global mean scaled by W (not its local mean); the mean over
processes (what `sync_dist=True` logs) is the global mean. Every process must call the loss at
the same step, also with nothing masked locally (the all-reduce is collective); with nothing
masked on any process the loss is a zero that keeps the graph. ITM and contrastive losses are
means over the equal-sized local batches (contrastive over a gathered global batch), which DDP's
averaging already makes global, so they need no such normalisation.

Gradient accumulation (k micro-batches per optimizer step, Lightning dividing each micro-batch's
loss by k) is covered the same way: the caller passes `count`, the masked tokens of this process
over the whole accumulation window (known before the window's first forward pass: the masks are
drawn with the data), and `accumulated=k`; each micro-batch then returns `sum / window count * W
* k`, so that the accumulated gradient is that of the mean over every masked token of the window
on every process, whatever the tokens' spread over micro-batches.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def world_size() -> int:
    """Number of data-parallel processes: torch.distributed's world size, 1 when not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def global_mean(
    total: torch.Tensor, count: int | torch.Tensor, accumulated: int = 1
) -> torch.Tensor:
    """This process's share of a mean over all processes' items, scaled by the world size W.

    `total` is the sum of the local items' losses, `count` the number of local items (of the
    whole accumulation window when `accumulated` = k > 1 micro-batches share it). Returns
    `total / global count * W * k` with the global count all-reduced (SUM, no gradient) over the
    processes, so that the mean over processes of the results (and DDP's average of their
    gradients, after Lightning's division by k) is the mean over every item of the global
    batch. Every process must call it. On one process without accumulation it is
    `total / count`. A global count of 0 divides by 1 (a zero `total` stays a zero that keeps
    the graph).
    """
    world = world_size()
    n = torch.as_tensor(count, device=total.device).detach().to(torch.long).clone()
    if world > 1:
        dist.all_reduce(n, op=dist.ReduceOp.SUM)  # gloo has no ReduceOp.AVG: SUM, then * W
    return total / n.clamp(min=1) * (world * accumulated)


def _gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All rows of `x` from every process (autograd flows back to each) and this rank's offset."""
    if world_size() == 1:
        return x, 0
    # the functional collective differentiates through the gather (its backward sums each rank's
    # slice of the gradient over processes, on gloo too); torch.distributed.nn's all_gather,
    # which did the same, is deprecated and warns on every step
    try:
        from torch.distributed._functional_collectives import all_gather_single as gather
    except ImportError:  # torch < 2.13: the differentiable gather under its older name
        from torch.distributed._functional_collectives import all_gather_tensor_autograd as gather

    world = dist.group.WORLD
    assert world is not None  # world_size() > 1: the default group is up
    return gather(x.contiguous(), 0, world), dist.get_rank() * x.shape[0]


def contrastive_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Global InfoNCE over L2-normalised embeddings [B, P]; `logit_scale` is the log-scale
    (used as it is: the run clamps the stored value after each step, `clamp_logit_scale_`).

    Returns {"contrastive": loss, "contrastive_accuracy": image->text top-1 accuracy}. The loss
    is a mean over the local rows; local batches have the same size on every process, so DDP's
    gradient average makes it the mean over the global batch.
    """
    image = F.normalize(image_embeddings.float(), dim=-1)  # [B, P]
    text = F.normalize(text_embeddings.float(), dim=-1)  # [B, P]
    scale = logit_scale.float().exp()
    all_image, offset = _gather_with_grad(image)  # [W*B, P]
    all_text, _ = _gather_with_grad(text)
    labels = torch.arange(image.shape[0], device=image.device) + offset
    logits_per_image = scale * image @ all_text.T  # [B, W*B]
    logits_per_text = scale * text @ all_image.T  # [B, W*B]
    loss = (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2
    accuracy = (logits_per_image.argmax(-1) == labels).float().mean()
    return {"contrastive": loss, "contrastive_accuracy": accuracy.detach()}


def masked_prediction_loss(
    head: nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    window_count: int | None = None,
    accumulated: int = 1,
) -> torch.Tensor:
    """Cross-entropy of `head` on the positions of `hidden` [B, N, D] whose label is set [B, N].

    The head (dense + LayerNorm + decoder to the vocabulary) runs only on those positions. On one
    process without accumulation: the mean over them. Otherwise `global_mean` of their summed
    cross-entropy: sum / (masked positions of all processes, over the accumulation window of
    `accumulated` micro-batches whose local count is `window_count`) * W * k; every process must
    call it, also when it has nothing masked. With nothing masked: a zero that keeps the graph.
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"hidden states {tuple(hidden.shape[:2])} and labels {tuple(labels.shape)} differ"
        )
    selected = labels != ignore_index  # [B, N]
    logits = head(hidden[selected])  # [M, V]
    if world_size() == 1 and window_count is None:
        if logits.shape[0] == 0:  # nothing masked: a zero that keeps the graph
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), labels[selected])
    if logits.shape[0] == 0:  # nothing masked here; the count still joins the all-reduce
        total = logits.float().sum() * 0.0
    else:
        total = F.cross_entropy(logits.float(), labels[selected], reduction="sum")
    count = logits.shape[0] if window_count is None else window_count
    return global_mean(total, count, accumulated)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Image-text matching cross-entropy over [B, 2] logits; labels 1 = matched, 0 = not.

    A mean over the local batch: batches have the same size on every process, so DDP's gradient
    average already makes it the mean over the global batch (no `global_mean` needed).
    """
    loss = F.cross_entropy(logits.float(), labels.long())
    accuracy = (logits.argmax(-1) == labels).float().mean()
    return {"itm": loss, "itm_accuracy": accuracy.detach()}
