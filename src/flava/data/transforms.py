"""Image transforms for FLAVA: RGB conversion, pretraining crops and evaluation resizing.

Every image goes through :func:`to_rgb` first (any PIL mode to 8-bit RGB, transparency composited
on white). :func:`image_transform` then builds the view(s) a model needs:

- ``pixel_values``: the image encoder's input, ``[3, S, S]`` float, normalised with the CLIP / FLAVA
  mean and std;
- ``codebook_pixel_values`` (optional): the same image region at the codebook (visual tokenizer)
  resolution, ``[3, C, C]`` float in ``[0, 1]``, not normalised, for masked image modelling targets.

For pretraining both views come from one random resized crop and one optional horizontal flip, so
the codebook tokens describe exactly the pixels the encoder sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = ["CLIP_MEAN", "CLIP_STD", "ImageTransform", "image_transform", "to_rgb"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_KINDS = ("pretrain", "eval")
# PIL modes whose samples are wider than 8 bits and need an explicit rescale to 0..255.
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
# Attempts at drawing a crop that fits the image before falling back to a central crop.
_CROP_ATTEMPTS = 10
_WHITE = (255, 255, 255, 255)


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Rescale a 16-bit, 32-bit integer or float single-band image to 8-bit ``L``."""
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    lo = float(values.min()) if values.size else 0.0
    hi = float(values.max()) if values.size else 0.0
    if lo >= 0.0 and hi <= 255.0:
        if image.mode == "F" and hi <= 1.0:
            values = values * 255.0  # float image in [0, 1]
    elif lo >= 0.0 and hi <= 65535.0:
        values = values / 257.0  # 16-bit range: 65535 -> 255
    else:
        values = (values - lo) * (255.0 / (hi - lo))  # anything else: stretch min..max
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _has_transparency(image: Image.Image) -> bool:
    """Return whether ``image`` carries an alpha band, a transparent colour or an RGBA palette."""
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB, compositing transparent pixels on white."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.mode in _HIGH_DEPTH_MODES:
        image = _high_depth_to_l(image)
    elif image.mode == "La":
        image = image.convert("LA")  # premultiplied alpha: PIL only converts it to LA
    try:
        if _has_transparency(image):
            background = Image.new("RGBA", image.size, _WHITE)
            return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert PIL mode {image.mode!r} to RGB: {err}") from None


def _random_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
) -> tuple[int, int, int, int]:
    """Draw a random resized crop box ``(top, left, height, width)``, as torchvision does."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(_CROP_ATTEMPTS):
        draw_area, draw_ratio = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draw_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * draw_ratio)
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
            return top, left, crop_h, crop_w
    # Fallback: the largest central crop whose aspect ratio lies within ``ratio``.
    image_ratio = width / height
    if image_ratio < ratio[0]:
        crop_w, crop_h = width, max(1, min(height, round(width / ratio[0])))
    elif image_ratio > ratio[1]:
        crop_w, crop_h = max(1, min(width, round(height * ratio[1]))), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _check_size(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_range(name: str, value: object, upper: float | None) -> tuple[float, float]:
    """Return ``value`` as an increasing pair of positive floats (at most ``upper``)."""
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of floats, got {value!r}") from None
    if not (0.0 < lo <= hi) or (upper is not None and hi > upper) or not math.isfinite(hi):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < low <= high{bound}, got {value!r}")
    return lo, hi


def _check_triplet(name: str, value: Sequence[float], positive: bool) -> tuple[float, ...]:
    """Return ``value`` as three finite floats (positive ones if ``positive``)."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three floats, got {value!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        raise ValueError(f"{name} must be three finite{' positive' if positive else ''} floats")
    return out


class ImageTransform:
    """Picklable PIL -> tensors transform giving ``pixel_values`` (+ ``codebook_pixel_values``)."""

    def __init__(
        self,
        kind: str = "eval",
        image_size: int = 224,
        codebook_size: int | None = None,
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        """Validate and store the settings; see :func:`image_transform`."""
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        self.kind = kind
        self.image_size = _check_size("image_size", image_size)
        self.codebook_size = (
            None if codebook_size is None else _check_size("codebook_size", codebook_size)
        )
        self.scale = _check_range("scale", scale, upper=1.0)
        self.ratio = _check_range("ratio", ratio, upper=None)
        self.hflip = bool(hflip)
        self.mean = _check_triplet("mean", mean, positive=False)
        self.std = _check_triplet("std", std, positive=True)

    def _pixel_values(self, region: Image.Image, size: tuple[int, int], flip: bool) -> torch.Tensor:
        """Resize an RGB region to ``size`` (bicubic, antialiased), flip it, and normalise it."""
        pixels = F.resize(
            F.pil_to_tensor(region), list(size), InterpolationMode.BICUBIC, antialias=True
        )
        if flip:
            pixels = F.horizontal_flip(pixels)
        pixels = F.to_dtype(pixels, torch.float32, scale=True)
        return F.normalize(pixels, list(self.mean), list(self.std))

    def _codebook_values(
        self, image: Image.Image, box: tuple[float, float, float, float], flip: bool
    ) -> torch.Tensor:
        """Resample ``box`` of ``image`` to the codebook size (Lanczos) as floats in [0, 1]."""
        size = self.codebook_size
        assert size is not None
        view = image.resize((size, size), Image.Resampling.LANCZOS, box=box)
        pixels = F.pil_to_tensor(view)
        if flip:
            pixels = F.horizontal_flip(pixels)
        return F.to_dtype(pixels, torch.float32, scale=True)

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Transform one PIL image; randomness uses ``generator`` or the global torch RNG."""
        rgb = to_rgb(image)
        width, height = rgb.size
        if width == 0 or height == 0:
            raise ValueError(f"cannot transform an empty image of size {width}x{height}")
        size = self.image_size
        if self.kind == "pretrain":
            top, left, crop_h, crop_w = _random_crop_box(
                width, height, self.scale, self.ratio, generator
            )
            flip = self.hflip and bool(torch.rand(1, generator=generator).item() < 0.5)
            box = (left, top, left + crop_w, top + crop_h)
            out = {"pixel_values": self._pixel_values(rgb.crop(box), (size, size), flip)}
        else:
            # Shorter side to ``size`` (the longer one truncated, as torchvision does), then the
            # central ``size`` x ``size`` crop.
            if width <= height:
                new_w, new_h = size, int(size * height / width)
            else:
                new_w, new_h = int(size * width / height), size
            top, left = round((new_h - size) / 2), round((new_w - size) / 2)
            resized = self._pixel_values(rgb, (new_h, new_w), flip=False)
            out = {"pixel_values": F.crop(resized, top, left, size, size)}
            flip = False
            # The same crop in original pixel coordinates (fractional), for the codebook view.
            sx, sy = width / new_w, height / new_h
            box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        if self.codebook_size is not None:
            out["codebook_pixel_values"] = self._codebook_values(rgb, box, flip)
        return out

    def __repr__(self) -> str:
        """Show the settings, as the constructor takes them."""
        return (
            f"{type(self).__name__}(kind={self.kind!r}, image_size={self.image_size}, "
            f"codebook_size={self.codebook_size}, scale={self.scale}, "
            f"ratio=({self.ratio[0]:.4g}, {self.ratio[1]:.4g}), hflip={self.hflip}, "
            f"mean={self.mean}, std={self.std})"
        )


def image_transform(
    kind: str = "eval",
    image_size: int = 224,
    codebook_size: int | None = None,
    scale: tuple[float, float] = (0.9, 1.0),
    hflip: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> ImageTransform:
    """Return the ``"pretrain"`` (random crop, flip) or ``"eval"`` (centre crop) transform."""
    return ImageTransform(
        kind=kind,
        image_size=image_size,
        codebook_size=codebook_size,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        mean=mean,
        std=std,
    )
