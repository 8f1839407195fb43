"""MIM targets: image token ids per patch, from the DALL-E codebook or a k-means patch codebook.

The DALL-E codebook (paper section 3.2) is used whenever weights are given. Offline, with no
weights, a k-means codebook over raw pixel patches is fitted on training images at the start of
the run; its centroids are a buffer, so they are saved with every checkpoint and reused on
resume. Targets are never random.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flava.model.codebook import ImageCodebook


def patch_features(pixel_values: torch.Tensor, patch_size: int, pool: int = 4) -> torch.Tensor:
    """[B, 3, H, W] -> [B, N, 3*pool*pool]: each patch average-pooled to pool x pool pixels."""
    b, c, h, w = pixel_values.shape
    cell = max(1, patch_size // pool)
    x = F.avg_pool2d(pixel_values.float(), cell) if cell > 1 else pixel_values.float()
    side = patch_size // cell  # pooled pixels per patch side
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(b, c, gh, side, gw, side).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, s, s]
    return x.reshape(b, gh * gw, c * side * side)


class KMeansCodebook(nn.Module):
    """Nearest-centroid ids of pooled pixel patches; centroids fitted once by k-means."""

    centroids: torch.Tensor  # [num_codes, F] (a buffer)
    fitted: torch.Tensor  # [] bool (a buffer)

    def __init__(self, num_codes: int, patch_size: int, pool: int = 4, channels: int = 3) -> None:
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"k-means codebook size must be at least 2, got {num_codes}")
        self.num_codes = num_codes
        self.patch_size = patch_size
        self.pool = min(pool, patch_size)
        dim = channels * (patch_size // max(1, patch_size // self.pool)) ** 2
        self.register_buffer("centroids", torch.zeros(num_codes, dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, pixel_values: torch.Tensor, iterations: int = 20, seed: int = 0) -> float:
        """k-means++-seeded Lloyd iterations on every patch of `pixel_values`; returns inertia."""
        x = patch_features(pixel_values, self.patch_size, self.pool).reshape(
            -1, self.centroids.shape[1]
        )
        if x.shape[0] < self.num_codes:
            raise ValueError(
                f"k-means needs at least {self.num_codes} patches, got {x.shape[0]}; "
                "use more images or a smaller codebook"
            )
        g = torch.Generator().manual_seed(seed)
        centroids = _kmeans_pp(x, self.num_codes, g)
        for _ in range(iterations):
            ids = torch.cdist(x, centroids).argmin(1)
            sums = torch.zeros_like(centroids).index_add_(0, ids, x)
            counts = torch.bincount(ids, minlength=self.num_codes).unsqueeze(1)
            empty = counts.squeeze(1) == 0
            centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1))
            if empty.any():  # re-seed empty clusters on the worst-fitted points
                far = torch.cdist(x, centroids).min(1).values.topk(int(empty.sum())).indices
                centroids[empty] = x[far]
        inertia = torch.cdist(x, centroids).min(1).values.pow(2).mean().item()
        self.centroids.copy_(centroids)
        self.fitted.fill_(True)
        return inertia

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> token ids [B, N]."""
        if not bool(self.fitted):
            raise RuntimeError("the k-means codebook has not been fitted; call fit() first")
        x = patch_features(pixel_values, self.patch_size, self.pool)  # [B, N, F]
        dist = torch.cdist(x.reshape(-1, x.shape[-1]), self.centroids.float())
        return dist.argmin(1).reshape(x.shape[0], x.shape[1])


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (on a subsample of at most 20,000 points for speed)."""
    if x.shape[0] > 20_000:
        x = x[torch.randperm(x.shape[0], generator=g)[:20_000]]
    chosen = [int(torch.randint(x.shape[0], (1,), generator=g))]
    nearest = (x - x[chosen[0]]).pow(2).sum(1)
    for _ in range(1, k):
        probs = nearest / nearest.sum() if nearest.sum() > 0 else torch.ones_like(nearest)
        idx = int(torch.multinomial(probs, 1, generator=g))
        chosen.append(idx)
        nearest = torch.minimum(nearest, (x - x[idx]).pow(2).sum(1))
    return x[chosen].clone()


class DalleTargets(nn.Module):
    """MIM targets from a frozen DALL-E codebook on the aligned low-resolution view."""

    def __init__(self, codebook: ImageCodebook) -> None:
        super().__init__()
        self.codebook = codebook

    @torch.no_grad()
    def forward(self, codebook_pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] pixels in [0, 1] -> token ids [B, (h/8)*(w/8)]."""
        return self.codebook.get_codebook_indices(codebook_pixel_values)
