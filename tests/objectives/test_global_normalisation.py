"""Masked-token losses are normalised by the masked count of all processes: with 2 processes
(gloo) whose halves hold different numbers of masked tokens, the mean over ranks of every
per-objective loss and the rank-averaged gradients (as DDP averages them) equal one process on
the global batch (to 1e-5, fp32). On one process the loss is the plain mean."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from flava.model import FlavaForPreTraining, preset
from flava.objectives.losses import global_mean, masked_prediction_loss
from flava.objectives.pretraining import LossWeights, pretraining_step, window_of

TOL = 1e-5
KINDS = ("image", "text", "vl")
# Masked positions per row of the global batch of 4: rows 0-1 are rank 0's half, 2-3 rank 1's.
IMAGE_MASKED = (1, 1, 4, 5)  # 2 vs 9 patches
TEXT_MASKED = (1, 1, 3, 4)  # 2 vs 7 tokens
LENGTH = 12


def _batch(config) -> dict[str, torch.Tensor]:
    """A global batch of 4 image-text pairs (pixels, masks, text, fixed random MIM targets)."""
    g = torch.Generator().manual_seed(0)
    b, n, size = 4, config.image.grid_size**2, config.image.image_size
    ids = torch.randint(1000, 2000, (b, LENGTH), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(b, LENGTH, dtype=torch.long)
    mask[3, 9:], ids[3, 9:], ids[3, 8] = 0, 0, 102  # one padded caption
    selected = torch.zeros(b, LENGTH, dtype=torch.bool)
    masked_pos = torch.zeros(b, n, dtype=torch.bool)
    for row in range(b):
        selected[row, 1 + torch.randperm(7, generator=g)[: TEXT_MASKED[row]]] = True
        masked_pos[row, torch.randperm(n, generator=g)[: IMAGE_MASKED[row]]] = True
    return {
        "pixel_values": torch.randn(b, 3, size, size, generator=g),
        "bool_masked_pos": masked_pos,
        "input_ids": ids,
        "attention_mask": mask,
        "input_ids_masked": ids.masked_fill(selected, 103),
        "mlm_labels": ids.masked_fill(~selected, -100),
        "targets": torch.randint(0, config.image.vocab_size, (b, n), generator=g),
    }


def _targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["targets"]


def _model() -> FlavaForPreTraining:
    torch.manual_seed(0)
    return FlavaForPreTraining(preset("tiny"), codebook=None).train()


def _run(model, batch, kind) -> tuple[dict[str, float], dict[str, torch.Tensor | None]]:
    """Per-objective losses and the parameter gradients of one step of `kind`."""
    model.zero_grad(set_to_none=True)
    out = pretraining_step(model, batch, kind, _targets, LossWeights(), negative_probability=0.0)
    out["loss"].backward()
    losses = {k: v.item() for k, v in out.items() if not k.endswith("accuracy")}
    grads = {name: p.grad for name, p in model.named_parameters()}
    return losses, grads


def _head_case(rank: int | None, local_counts: tuple[int, int]):
    """A linear head on [2, 5, 4] hidden states per rank, `local_counts` masked positions each;
    rank None: one process on both halves. Returns (loss, requires_grad, weight grad)."""
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(4, 7)
    with torch.no_grad():
        head.weight.copy_(torch.randn(7, 4, generator=g))
    hidden = torch.randn(4, 5, 4, generator=g)
    labels = torch.full((4, 5), -100)
    for half, count in enumerate(local_counts):
        labels[2 * half : 2 * half + 2].view(-1)[:count] = torch.arange(count) % 7
    if rank is not None:
        hidden, labels = hidden[2 * rank : 2 * rank + 2], labels[2 * rank : 2 * rank + 2]
    loss = masked_prediction_loss(head, hidden, labels)
    loss.backward()
    return loss.detach(), loss.requires_grad, head.weight.grad


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    batch = _batch(preset("tiny"))
    model = _model()
    reference = {}
    if rank == 0:  # one process on the global batch, before the process group exists
        reference = {kind: _run(model, batch, kind) for kind in KINDS}
        heads = {c: _head_case(None, c) for c in [(0, 5), (0, 0)]}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        half = {k: v[2 * rank : 2 * rank + 2] for k, v in batch.items()}
        result = {}
        for kind in KINDS:
            losses, grads = _run(model, half, kind)
            names = sorted(losses)
            mean = torch.tensor([losses[k] for k in names], dtype=torch.float64)
            dist.all_reduce(mean)
            mean /= world
            averaged = {}
            for name, grad in grads.items():  # DDP: all_reduce SUM / world
                if grad is not None:
                    dist.all_reduce(grad)
                    grad /= world
                averaged[name] = grad
            if rank == 0:
                ref_losses, ref_grads = reference[kind]
                assert sorted(ref_losses) == names, (kind, names)
                loss_diff = max(
                    abs(m - ref_losses[k]) for k, m in zip(names, mean.tolist(), strict=True)
                )
                assert {n for n, g in ref_grads.items() if g is None} == {
                    n for n, g in averaged.items() if g is None
                }, kind
                grad_diff = max(
                    (g - ref_grads[n]).abs().max().item()
                    for n, g in averaged.items()
                    if g is not None
                )
                result[kind] = (names, loss_diff, grad_diff)
        for counts in [(0, 5), (0, 0)]:  # rank 0 has nothing masked; then nobody has
            loss, requires_grad, grad = _head_case(rank, counts)
            mean = loss.reshape(1).clone()
            dist.all_reduce(mean)
            dist.all_reduce(grad)
            if rank == 0:
                ref_loss, _, ref_grad = heads[counts]
                result[counts] = (
                    requires_grad,
                    abs(mean.item() / world - ref_loss.item()),
                    (grad / world - ref_grad).abs().max().item(),
                    ref_loss.item(),
                )
        # Rank 0 has no matched pair: it still runs MMM (a zero share) and joins the all-reduce.
        with torch.no_grad():
            p_negative = 0.999999 if rank == 0 else 0.0
            generator = torch.Generator().manual_seed(0)
            step = pretraining_step(
                model, half, "vl", _targets, LossWeights(), p_negative, generator
            )
        keys = [None] * world
        dist.all_gather_object(keys, sorted(step))
        result["no_positive"] = (keys, step["mmm_image"].item(), step["mmm_text"].item())
        if rank == 0:
            out["result"] = result
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_with_uneven_masks_equal_one_process(monkeypatch):
    # The spawned processes import this module as `tests.objectives...` with the parent's
    # sys.path, which holds the repository root under `python -m pytest` but not under `pytest`.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    result = out["result"]
    expected = {
        "image": ["loss", "mim"],
        "text": ["loss", "mlm"],
        "vl": ["contrastive", "itm", "loss", "mmm_image", "mmm_text"],
    }
    for kind in KINDS:
        names, loss_diff, grad_diff = result[kind]
        print(f"{kind}: {names} max |loss diff| {loss_diff:.3g}, max |grad diff| {grad_diff:.3g}")
        assert names == expected[kind]
        assert loss_diff < TOL and grad_diff < TOL, kind
    for counts in [(0, 5), (0, 0)]:
        requires_grad, loss_diff, grad_diff, ref_loss = result[counts]
        print(
            f"head, masked {counts}: max |loss diff| {loss_diff:.3g}, |grad diff| {grad_diff:.3g}"
        )
        assert requires_grad and loss_diff < TOL and grad_diff < TOL, counts
    assert result[(0, 0)][3] == 0.0  # nothing masked anywhere: zero
    keys, mmm_image, mmm_text = result["no_positive"]
    assert keys[0] == keys[1] and {"mmm_image", "mmm_text", "itm"} <= set(keys[0])
    assert mmm_image == 0.0 and mmm_text == 0.0


def test_single_process_loss_is_the_plain_mean():
    head = torch.nn.Linear(4, 7)
    hidden = torch.randn(3, 6, 4)
    labels = torch.full((3, 6), -100)
    labels[0, 2], labels[1, :4], labels[2, 5] = 1, torch.tensor([0, 3, 6, 2]), 5
    loss = masked_prediction_loss(head, hidden, labels)
    selected = labels != -100
    assert torch.equal(loss, F.cross_entropy(head(hidden[selected]), labels[selected]))
    total = F.cross_entropy(head(hidden[selected]), labels[selected], reduction="sum")
    torch.testing.assert_close(global_mean(total, int(selected.sum())), loss)
    assert global_mean(total * 0.0, 0).item() == 0.0  # nothing to average: no division by 0


def _accumulated(model, batch, kind, window: bool):
    """Losses and gradients of two micro-batches (rows 0-1, 2-3) accumulated as Lightning does
    (each loss / 2), normalised by the window's counts or, without it, each by its own."""
    model.zero_grad(set_to_none=True)
    weights = LossWeights(contrastive=0.0, itm=0.0)  # MMM on matched pairs; no batch-wide terms
    halves = [
        {**{k: v[rows] for k, v in batch.items()}, "kind": kind, "batch_index": i}
        for i, rows in enumerate((slice(0, 2), slice(2, 4)))
    ]
    generators = lambda index: torch.Generator().manual_seed(index)  # noqa: E731
    span = window_of(halves, weights, 0.0, generators) if window else None
    losses: dict[str, float] = {}
    for half in halves:
        tensors = {k: v for k, v in half.items() if isinstance(v, torch.Tensor)}
        out = pretraining_step(
            model, tensors, kind, _targets, weights, 0.0, generators(half["batch_index"]), span
        )
        (out["loss"] / len(halves)).backward()
        for k, v in out.items():
            if not k.endswith("accuracy"):
                losses[k] = losses.get(k, 0.0) + v.item() / len(halves)
    return losses, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind", KINDS)
def test_accumulated_micro_batches_equal_one_batch(kind):
    """Two micro-batches with uneven masks, accumulated, give the loss and gradient of the one
    batch holding both: masked tokens normalised over the window, not per micro-batch."""
    model, batch = _model(), _batch(preset("tiny"))
    model.zero_grad(set_to_none=True)
    weights = LossWeights(contrastive=0.0, itm=0.0)
    out = pretraining_step(model, batch, kind, _targets, weights, negative_probability=0.0)
    out["loss"].backward()
    ref_loss = out["loss"].item()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    losses, grads = _accumulated(model, batch, kind, window=True)
    assert losses["loss"] == pytest.approx(ref_loss, rel=1e-6)
    assert set(ref) == {n for n, g in grads.items() if g is not None}
    for name, g in ref.items():
        torch.testing.assert_close(grads[name], g, atol=TOL, rtol=TOL)
    # the check can fail: each micro-batch normalised by its own count gives another objective
    own, _ = _accumulated(model, batch, kind, window=False)
    assert abs(own["loss"] - ref_loss) > 1e-3
