"""Contrastive loss over an accumulation window (training.contrastive_accumulation): k=4
micro-batches, each backward pass scaled by 1/k as Lightning's accumulation does, give the
contrastive loss and gradients of one batch of 4x the size (to 1e-5, fp32), on one process and
on 2 (gloo, gradients averaged as DDP does)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flava.model import FlavaForPreTraining, preset
from flava.objectives.pretraining import (
    CONTRASTIVE_INPUTS,
    ContrastiveWindow,
    LossWeights,
    pretraining_step,
)

TOL = 1e-5
K, MICRO = 4, 2  # micro-batches per step, pairs per micro-batch and process
ONLY_CONTRASTIVE = LossWeights(mim=0, mlm=0, mmm_image=0, mmm_text=0, itm=0, contrastive=1)


def _pairs(n: int) -> dict[str, torch.Tensor]:
    """`n` random image-text pairs (one padded caption)."""
    config = preset("tiny")
    g = torch.Generator().manual_seed(0)
    size = config.image.image_size
    ids = torch.randint(1000, 2000, (n, 10), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(n, 10, dtype=torch.long)
    mask[1, 6:], ids[1, 6:], ids[1, 5] = 0, 0, 102
    return {
        "pixel_values": torch.randn(n, 3, size, size, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
    }


def _model() -> FlavaForPreTraining:
    torch.manual_seed(0)
    model = FlavaForPreTraining(preset("tiny"), codebook=None).train()
    with torch.no_grad():
        model.flava.logit_scale.fill_(2.5)
    return model


def _grads(model: FlavaForPreTraining) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_batch(batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    model = _model()
    out = pretraining_step(model, batch, "vl", None, ONLY_CONTRASTIVE)
    out["loss"].backward()
    return out["contrastive"].item(), _grads(model)


def _windowed(micro: list[dict[str, torch.Tensor]]) -> tuple[list[float], dict, float]:
    """Losses of each micro-batch, the accumulated gradients, and the logit scale's gradient."""
    model = _model()
    window = ContrastiveWindow([{k: m[k] for k in CONTRASTIVE_INPUTS if k in m} for m in micro])
    losses = []
    for i, batch in enumerate(micro):
        window.position = i
        out = pretraining_step(
            model, batch, "vl", None, ONLY_CONTRASTIVE, contrastive_window=window
        )
        (out["loss"] / len(micro)).backward()  # Lightning divides by accumulate_grad_batches
        losses.append(out["contrastive"].item())
    return losses, _grads(model), model.flava.logit_scale.grad.item()


def _split(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    size = next(iter(batch.values())).shape[0] // parts
    return [{k: v[i * size : (i + 1) * size] for k, v in batch.items()} for i in range(parts)]


def test_window_equals_a_batch_of_k_times_the_size():
    batch = _pairs(K * MICRO)
    loss, grads = _one_batch(batch)
    losses, windowed, _ = _windowed(_split(batch, K))
    assert all(abs(x - loss) < TOL for x in losses), (losses, loss)
    assert windowed.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(windowed[name], grad, atol=TOL, rtol=0, msg=name)
    # without the window, each micro-batch sees only its own negatives: a different loss
    alone = pretraining_step(_model(), _split(batch, K)[0], "vl", None, ONLY_CONTRASTIVE)
    assert abs(alone["contrastive"].item() - loss) > 1e-3


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = _pairs(world * K * MICRO)
        # micro-batch i of rank r: its slice of the i-th global micro-batch
        micro = [_split(m, world)[rank] for m in _split(batch, K)]
        losses, grads, _ = _windowed(micro)
        for g in grads.values():  # DDP averages the gradients over processes
            dist.all_reduce(g)
            g /= world
        out[rank] = (losses, grads)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_window_equals_one_batch():
    batch = _pairs(2 * K * MICRO)
    loss, grads = _one_batch(batch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    for rank in range(2):
        losses, windowed = out[rank]
        # each rank's loss is the mean over its rows; the mean over ranks is the global loss
        assert len(losses) == K
    means = [sum(out[r][0][i] for r in range(2)) / 2 for i in range(K)]
    assert all(abs(m - loss) < TOL for m in means), (means, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(out[0][1][name], grad, atol=TOL, rtol=0, msg=name)
