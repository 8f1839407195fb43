"""Linear probes on frozen image features (paper section 5, table 3; CLIP's protocol).

Features (`features=`):
- `encoder_cls`: the image encoder's CLS after its final LayerNorm (what the paper probes);
- `projection`: that CLS through the contrastive image projection (unnormalised);
- `mean_patch`: the mean of the final-LayerNorm patch tokens (BEiT's and MAE's probe).

The classifier is multinomial logistic regression fitted full-batch with L-BFGS (strong Wolfe
line search) in PyTorch. Objective, for n examples and L2 strength `l2` (lambda):

    mean_i CE(W x_i + b, y_i) + (lambda / 2) * ||W||_F^2      (the bias is not penalised)

which has the same minimiser as scikit-learn's `LogisticRegression(C=...)` objective
`C * sum_i CE + 1/2 ||W||^2` with **C = 1 / (n * lambda)**. Lambda is swept on a log grid
(default the paper's 1e-6 ... 1e6) by validation accuracy; the final probe is fitted on train +
validation with the chosen lambda and its test accuracy reported.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from flava.data.sources.errors import SAMPLE_ERRORS
from flava.data.sources.skips import SkipLog
from flava.model.flava import FlavaModel

FEATURES = ("encoder_cls", "projection", "mean_patch")
SMALL_FIT = 50_000_000  # features x classes below which an L-BFGS fit runs on one CPU thread


@torch.no_grad()
def image_features(
    model: FlavaModel,
    load: Callable[[int], Any],
    count: int,
    transform: Callable[..., dict[str, torch.Tensor]],
    features: str = "encoder_cls",
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
    num_workers: int = 0,
    skips: SkipLog | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """([K, D] frozen features, the K indices kept) of images load(0) ... load(count - 1),
    loaded by workers; an image that cannot be used is left out and counted in `skips`."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    skips = skips if skips is not None else SkipLog()
    was_training = model.training
    model.eval()
    out, kept = [], []
    loader: Any = torch.utils.data.DataLoader(
        _Pixels(load, count, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        collate_fn=_collate_usable,
    )
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="features", leave=False)
    try:
        for pixels, indices, failures in loader:
            for index, exc in failures:
                skips.add(exc, f"image {index}")
            if not indices:
                continue
            kept += indices
            out.append(_features(model, pixels.to(device), features).float().cpu())
    finally:
        model.train(was_training)
    return (torch.cat(out) if out else torch.empty(0, 0)), kept


def _features(model: FlavaModel, pixels: torch.Tensor, features: str) -> torch.Tensor:
    """[B, D] features of one batch of pixels."""
    encoded = model.image_encoder(pixels)
    if features == "projection":
        return model.image_embedding(encoded)
    if features == "mean_patch":
        return encoded.last_hidden_state[:, 1:].mean(dim=1)
    return encoded.last_hidden_state[:, 0]


class _Pixels(torch.utils.data.Dataset):
    """(index, transformed pixels of image i) or (index, the exception it raised)."""

    def __init__(self, load: Callable[[int], Any], count: int, transform: Callable) -> None:
        self.load, self.count, self.transform = load, count, transform

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[int, Any]:
        try:
            return index, self.transform(self.load(index))["pixel_values"]
        except SAMPLE_ERRORS as exc:
            return index, exc


def _collate_usable(
    items: list[tuple[int, Any]],
) -> tuple[torch.Tensor | None, list[int], list[tuple[int, BaseException]]]:
    """(pixels of the usable images, their indices, (index, exception) of the others)."""
    good = [(i, x) for i, x in items if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x in items if not isinstance(x, torch.Tensor)]
    pixels = torch.stack([x for _, x in good]) if good else None
    return pixels, [i for i, _ in good], bad


@dataclass
class LogisticRegression:
    """A fitted multinomial logistic regression: logits = x @ weight.T + bias."""

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    iterations: int = 0
    loss: float = math.nan

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C] logits."""
        return x.to(self.weight) @ self.weight.T + self.bias

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C] class probabilities."""
        return self.logits(x).softmax(dim=-1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Top-1 accuracy."""
        return (self.logits(x).argmax(dim=-1).cpu() == y.cpu()).float().mean().item()


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    max_iter: int = 1000,
    dtype: torch.dtype = torch.float64,
    init: LogisticRegression | None = None,
    device: torch.device | str = "cpu",
) -> LogisticRegression:
    """Minimise mean CE + l2/2 ||W||^2 with full-batch L-BFGS (see the module doc for C)."""
    x = x.to(device=device, dtype=dtype)
    y = y.to(device=device, dtype=torch.long)
    d = x.shape[1]
    if init is not None:
        weight = init.weight.detach().to(device=device, dtype=dtype).clone()
        bias = init.bias.detach().to(device=device, dtype=dtype).clone()
    else:
        weight = torch.zeros(num_classes, d, device=device, dtype=dtype)
        bias = torch.zeros(num_classes, device=device, dtype=dtype)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    precise = dtype == torch.float64
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 5 // 4,
        tolerance_grad=1e-10 if precise else 1e-6,
        tolerance_change=1e-14 if precise else 1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with _threads_for(x.numel() * num_classes, x.device):
        optimizer.step(closure)
    state = optimizer.state[weight]  # L-BFGS keeps its state under the first parameter
    weight, bias = weight.detach(), bias.detach()
    with torch.no_grad():
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
    return LogisticRegression(weight, bias, l2, int(state.get("n_iter", 0)), float(loss))


@contextlib.contextmanager
def _threads_for(work: int, device: torch.device) -> Iterator[None]:
    """One intra-op thread for small CPU fits: thread hand-offs would dominate each tiny op."""
    previous = torch.get_num_threads()
    if device.type == "cpu" and work < SMALL_FIT:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def l2_grid(low: float = 1e-6, high: float = 1e6, points: int = 13) -> list[float]:
    """Log-spaced lambdas from high to low (strong to weak: warm starts go downhill)."""
    if points == 1:
        return [high]
    a, b = math.log10(low), math.log10(high)
    return [10 ** (b - (b - a) * i / (points - 1)) for i in range(points)]


@dataclass
class ProbeResult:
    """The chosen lambda, its validation accuracy, the sweep, and the final probe's scores."""

    l2: float
    val_accuracy: float
    sweep: list[tuple[float, float]] = field(default_factory=list)
    train_accuracy: float = math.nan
    test_accuracy: float = math.nan
    model: LogisticRegression | None = None


def sweep_and_fit(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    grid: Sequence[float],
    max_iter: int = 1000,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> ProbeResult:
    """Pick lambda by validation accuracy (ties: the stronger), refit on train + val, test."""
    sweep: list[tuple[float, float]] = []
    best: tuple[float, float] | None = None
    previous = None
    for l2 in sorted(grid, reverse=True):
        probe = fit_logistic_regression(*train, num_classes, l2, max_iter, dtype, previous, device)
        previous = probe
        acc = probe.accuracy(*val)
        sweep.append((l2, acc))
        if best is None or acc > best[1]:
            best = (l2, acc)
    assert best is not None
    x = torch.cat([train[0], val[0]])
    y = torch.cat([train[1], val[1]])
    final = fit_logistic_regression(x, y, num_classes, best[0], max_iter, dtype, None, device)
    return ProbeResult(
        l2=best[0],
        val_accuracy=best[1],
        sweep=sweep,
        train_accuracy=final.accuracy(x, y),
        test_accuracy=final.accuracy(*test),
        model=final,
    )
