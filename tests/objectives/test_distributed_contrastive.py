"""With 2 processes (gloo), the global contrastive loss and its gradients equal one process on
the concatenated batch (to 1e-5): the gather passes gradients back to every process, and it
warns of nothing (a deprecated collective once printed a FutureWarning every step)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flava.objectives.losses import contrastive_loss

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        image, text = _data()
        local = slice(rank * 4, rank * 4 + 4)
        img = image[local].clone().requires_grad_(True)
        txt = text[local].clone().requires_grad_(True)
        scale = torch.tensor(2.0, requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = contrastive_loss(img, txt, scale)["contrastive"]
            # DDP averages gradients over processes: do the same by hand
            (loss / world).backward()
        grads = [img.grad, txt.grad, scale.grad.reshape(1)]
        for g in grads[2:]:
            dist.all_reduce(g)
        losses = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(losses, loss.detach().reshape(1))
        noise = [
            str(w.message)
            for w in caught
            if issubclass(w.category, DeprecationWarning | FutureWarning)
        ]
        out[rank] = (torch.cat(losses).mean().item(), img.grad, txt.grad, scale.grad.item(), noise)
    finally:
        dist.destroy_process_group()


def test_two_process_contrastive_equals_one_process():
    image, text = _data()
    img = image.clone().requires_grad_(True)
    txt = text.clone().requires_grad_(True)
    scale = torch.tensor(2.0, requires_grad=True)
    ref = contrastive_loss(img, txt, scale)["contrastive"]
    ref.backward()
    manager = mp.Manager()
    out = manager.dict()
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    mean_loss = sum(out[r][0] for r in range(2)) / 2
    assert abs(mean_loss - ref.item()) < 1e-5
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]), img.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([out[0][2], out[1][2]]), txt.grad, atol=1e-5, rtol=0)
    assert abs(out[0][3] - scale.grad.item()) < 1e-5
    assert out[0][4] == [] and out[1][4] == []
