"""Zero-shot image-text retrieval with every caption of every image (paper section 5, table 4).

Image -> text: an image scores a hit at k when any of its captions is among the k texts most
similar to it. Text -> image: a caption scores a hit when its own image is among the k images
most similar to it. (The original FLAVA script used only the first caption per image.) The
embeddings are computed here; R@k is `flava.tasks.metrics.recall_at_k`.

Under torch.distributed (world size W > 1) every embedding function shares the work: the set is
cut into the same batches as in one process, each process embeds every W-th batch, and the rows
are gathered back in item order, so every process holds what one process would have computed
(the same batches give the same numbers). Every process must call it with the same items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from PIL import Image

from flava.data.sources.errors import SAMPLE_ERRORS
from flava.data.sources.skips import SkipLog
from flava.model.flava import FlavaModel

# embeds the items of one batch: (embeddings [K, P], the K item indices used), skips counted
BatchEmbedder = Callable[[range, SkipLog], tuple[torch.Tensor, list[int]]]


@torch.no_grad()
def embed_images(
    model: FlavaModel,
    images: Sequence[Image.Image],
    transform: Callable[[Image.Image], dict[str, torch.Tensor]],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Projected, L2-normalised image embeddings [N, P] in batches."""

    def batch(items: range, skips: SkipLog) -> tuple[torch.Tensor, list[int]]:
        pixels = torch.stack([transform(images[i])["pixel_values"] for i in items])
        return F.normalize(model.encode_image(pixels.to(device)).float(), dim=-1), list(items)

    dim = model.config.projection_dim
    return embed_in_batches(len(images), batch_size, batch, dim, progress=progress)[0]


@torch.no_grad()
def embed_usable_images(
    model: FlavaModel,
    load: Callable[[int], Image.Image],
    count: int,
    transform: Callable[[Image.Image], dict[str, torch.Tensor]],
    skips: SkipLog,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[torch.Tensor, list[int]]:
    """(embeddings [K, P], indices kept) of images load(0) ... load(count - 1); an image that
    cannot be used (`BadSample`, unreadable file) is left out and counted in `skips`."""

    def batch(items: range, skips: SkipLog) -> tuple[torch.Tensor, list[int]]:
        pixels, kept = [], []
        for i in items:
            try:
                pixels.append(transform(load(i))["pixel_values"])
            except SAMPLE_ERRORS as exc:
                skips.add(exc, f"image {i}")
                continue
            kept.append(i)
        if not pixels:
            return torch.empty(0, model.config.projection_dim), kept
        emb = model.encode_image(torch.stack(pixels).to(device))
        return F.normalize(emb.float(), dim=-1), kept

    dim = model.config.projection_dim
    return embed_in_batches(count, batch_size, batch, dim, skips, progress, "images")


@torch.no_grad()
def embed_texts(
    model: FlavaModel,
    tokenizer: Callable[..., dict[str, torch.Tensor]],
    texts: Sequence[str],
    batch_size: int = 256,
    max_length: int = 77,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Projected, L2-normalised text embeddings [N, P] in batches."""

    def batch(items: range, skips: SkipLog) -> tuple[torch.Tensor, list[int]]:
        tok = tokenizer([texts[i] for i in items], max_length=max_length)
        emb = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device))
        return F.normalize(emb.float(), dim=-1), list(items)

    dim = model.config.projection_dim
    return embed_in_batches(len(texts), batch_size, batch, dim, progress=progress, what="texts")[0]


def embed_in_batches(
    count: int,
    batch_size: int,
    embed: BatchEmbedder,
    dim: int,
    skips: SkipLog | None = None,
    progress: bool = False,
    what: str = "images",
) -> tuple[torch.Tensor, list[int]]:
    """(rows [K, dim] on CPU, item indices kept) of `embed` over range(count) in batches; under
    torch.distributed each process embeds every W-th batch and all rows are gathered."""
    world, rank = process_count_and_rank()
    starts = range(0, count, batch_size)
    mine = starts[rank::world]
    local = SkipLog() if skips is None or world > 1 else skips
    rows, kept = [], []
    for start in _progress(mine, progress and rank == 0, what):
        emb, used = embed(range(start, min(start + batch_size, count)), local)
        rows.append(emb.cpu())
        kept += used
    out = torch.cat(rows) if rows else torch.empty(0, dim)
    if world == 1 or count == 0:
        return out, kept
    for _ in range(len(starts[::world]) - len(mine)):  # as many batches as rank 0 runs: a
        embed(range(0, min(batch_size, count)), SkipLog())  # sharded model gathers in each
    out, kept = _gathered(out, kept)
    if skips is not None:
        _add_counts(skips, local.counts)
    return out, kept


def process_count_and_rank() -> tuple[int, int]:
    """(world size, rank) of the initialised torch.distributed group, else (1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gathered(rows: torch.Tensor, kept: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Every process's rows and item indices, sorted by item index (uneven counts padded)."""
    index = torch.tensor(kept, dtype=torch.long)
    all_rows, all_index = _all_gather(rows), _all_gather(index)
    index = torch.cat(all_index)
    order = index.argsort()
    return torch.cat(all_rows)[order], index[order].tolist()


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Each process's `tensor` (first dimensions may differ), on CPU, in rank order."""
    import torch.distributed as dist

    device = _collective_device()
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    most = max(int(s) for s in sizes)
    padded = torch.zeros((most, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [p[: int(s)].cpu() for p, s in zip(parts, sizes, strict=True)]


def _add_counts(skips: SkipLog, counts: dict[str, int]) -> None:
    """Add every process's skip counts (by reason) to `skips`."""
    import torch.distributed as dist

    everyone: list[dict[str, int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, counts)
    for part in everyone:
        for reason, n in (part or {}).items():
            skips.counts[reason] = skips.counts.get(reason, 0) + n


T = TypeVar("T")


def _progress(iterable: Iterable[T], enabled: bool, what: str) -> Iterable[T]:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=f"embedding {what}", leave=False)
