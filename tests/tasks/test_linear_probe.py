"""The L-BFGS logistic-regression probe against scikit-learn, the L2 sweep, feature choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression as SkLogisticRegression

from flava.data.transforms import image_transform
from flava.model import FlavaModel, preset
from flava.tasks.linear_probe import (
    fit_logistic_regression,
    image_features,
    l2_grid,
    sweep_and_fit,
)


def _data(n: int = 90, d: int = 6, c: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = (x @ w.T + 0.8 * torch.randn(n, c, generator=g, dtype=torch.float64)).argmax(1)
    return x, y


@pytest.mark.parametrize("l2", [1e-3, 0.1, 10.0])
def test_lbfgs_probe_matches_sklearn_multinomial(l2):
    x, y = _data()
    n = x.shape[0]
    ours = fit_logistic_regression(x, y, 3, l2)
    # mean CE + l2/2 ||W||^2  <=>  C * sum CE + 1/2 ||W||^2  with  C = 1 / (n * l2)
    ref = SkLogisticRegression(C=1.0 / (n * l2), tol=1e-12, max_iter=10_000).fit(x.numpy(), y)
    np.testing.assert_allclose(ours.weight.numpy(), ref.coef_, atol=1e-5)
    np.testing.assert_allclose(
        ours.predict_proba(x).numpy(), ref.predict_proba(x.numpy()), atol=1e-5
    )
    # the unpenalised intercepts are defined up to a shared constant
    centred = (ours.bias - ours.bias.mean()).numpy()
    np.testing.assert_allclose(centred, ref.intercept_ - ref.intercept_.mean(), atol=1e-5)
    assert ours.accuracy(x, y) == pytest.approx(ref.score(x.numpy(), y))


def test_l2_grid_and_sweep():
    grid = l2_grid(1e-6, 1e6, 13)
    assert len(grid) == 13 and grid[0] == pytest.approx(1e6) and grid[-1] == pytest.approx(1e-6)
    assert l2_grid(1e-2, 1e2, 1) == [1e2]
    x, y = _data(150, 5, 3, seed=1)
    train, val, test = (x[:90], y[:90]), (x[90:120], y[90:120]), (x[120:], y[120:])
    result = sweep_and_fit(train, val, test, 3, l2_grid(1e-4, 1e4, 9))
    assert len(result.sweep) == 9
    assert result.val_accuracy == max(acc for _, acc in result.sweep)
    # very strong regularisation predicts one class; the chosen lambda must beat it
    strongest = dict(result.sweep)[max(dict(result.sweep))]
    assert result.val_accuracy > strongest
    assert result.test_accuracy > 0.6 and result.model is not None


@pytest.mark.slow
def test_feature_choices():
    model = FlavaModel(preset("tiny")).eval()
    images = [torch.zeros(3, 64, 64)] * 3
    transform = lambda t: {"pixel_values": t}  # noqa: E731
    cls, kept = image_features(model, images.__getitem__, 3, transform, "encoder_cls", batch_size=2)
    assert kept == [0, 1, 2]
    proj, _ = image_features(model, images.__getitem__, 3, transform, "projection", batch_size=2)
    mean, _ = image_features(model, images.__getitem__, 3, transform, "mean_patch", batch_size=2)
    with torch.no_grad():
        out = model.image_encoder(torch.zeros(1, 3, 64, 64))
    torch.testing.assert_close(cls[0], out.last_hidden_state[0, 0])
    torch.testing.assert_close(proj[0], model.image_embedding(out)[0])
    patches = out.last_hidden_state[0, 1:]
    assert patches.shape[0] == model.config.image.grid_size**2
    torch.testing.assert_close(mean[0], patches.mean(dim=0))
    assert cls.shape == (3, model.config.image.hidden_size)
    assert proj.shape == (3, model.config.projection_dim)
    with pytest.raises(ValueError, match="features"):
        image_features(model, images.__getitem__, 3, image_transform("eval", 64), "pooled")
