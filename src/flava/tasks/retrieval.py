"""Zero-shot image-text retrieval with every caption of every image (paper section 5, table 4).

Image -> text: an image scores a hit at k when any of its captions is among the k texts most
similar to it. Text -> image: a caption scores a hit when its own image is among the k images
most similar to it. (The original FLAVA script used only the first caption per image.) The
embeddings are computed here; R@k is `flava.tasks.metrics.recall_at_k`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from flava.data.sources.base import SAMPLE_ERRORS, SkipLog
from flava.model.flava import FlavaModel


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
    out = []
    for start in _progress(range(0, len(images), batch_size), progress, "images"):
        pixels = torch.stack(
            [transform(im)["pixel_values"] for im in images[start : start + batch_size]]
        )
        out.append(F.normalize(model.encode_image(pixels.to(device)).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.projection_dim)


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
    out, kept = [], []
    for start in _progress(range(0, count, batch_size), progress, "images"):
        pixels = []
        for i in range(start, min(start + batch_size, count)):
            try:
                pixels.append(transform(load(i))["pixel_values"])
            except SAMPLE_ERRORS as exc:
                skips.add(exc, f"image {i}")
                continue
            kept.append(i)
        if pixels:
            emb = model.encode_image(torch.stack(pixels).to(device))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
    return (torch.cat(out) if out else torch.empty(0, model.config.projection_dim)), kept


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
    out = []
    for start in _progress(range(0, len(texts), batch_size), progress, "texts"):
        tok = tokenizer(list(texts[start : start + batch_size]), max_length=max_length)
        emb = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device))
        out.append(F.normalize(emb.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.projection_dim)


def _progress(iterable, enabled: bool, what: str):  # noqa: ANN001, ANN202
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=f"embedding {what}", leave=False)
