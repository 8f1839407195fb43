"""Zero-shot image-text retrieval with every caption of every image (paper section 5, table 4).

Image -> text: an image scores a hit at k when any of its captions is among the k texts most
similar to it. Text -> image: a caption scores a hit when its own image is among the k images
most similar to it. (The original FLAVA script used only the first caption per image.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from flava.data.sources.base import SAMPLE_ERRORS, SkipLog
from flava.model.flava import FlavaModel


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
