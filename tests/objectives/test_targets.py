"""k-means MIM codebook: fitting recovers clusters, targets are per patch, state is saved."""

from __future__ import annotations

import pytest
import torch

from flava.objectives.targets import KMeansCodebook, patch_features


def test_patch_features_order_and_pooling():
    x = torch.arange(2 * 3 * 8 * 16, dtype=torch.float).reshape(2, 3, 8, 16)
    f = patch_features(x, patch_size=8, pool=8)  # no pooling: raw patches
    assert f.shape == (2, 2, 3 * 64)
    assert torch.equal(f[0, 1].reshape(3, 8, 8), x[0, :, :, 8:16])  # row-major patch order
    pooled = patch_features(x, patch_size=8, pool=2)
    assert pooled.shape == (2, 2, 12)
    torch.testing.assert_close(pooled[0, 0, 0], x[0, 0, :4, :4].mean())


def test_kmeans_recovers_colour_clusters_and_round_trips():
    colours = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 3, (40, 2, 2), generator=g)  # 40 images of 2x2 patches of 4 px
    img = colours[ids].permute(0, 3, 1, 2).repeat_interleave(4, 2).repeat_interleave(4, 3)
    img = img + 0.01 * torch.randn(img.shape, generator=g)
    km = KMeansCodebook(3, patch_size=4, pool=2)
    with pytest.raises(RuntimeError, match="fitted"):
        km(img)
    km.fit(img, iterations=10)
    out = km(img)
    assert out.shape == (40, 4)
    # same colour <-> same code
    flat = ids.reshape(40, 4)
    for c in range(3):
        assert out[flat == c].unique().numel() == 1
    assert out.unique().numel() == 3
    again = KMeansCodebook(3, patch_size=4, pool=2)
    again.load_state_dict(km.state_dict())
    assert torch.equal(again(img), out)
    with pytest.raises(ValueError, match="at least"):
        KMeansCodebook(500, patch_size=4, pool=2).fit(img[:2])
