"""Image transforms for FLAVA: RGB conversion, pretraining crops and evaluation resizing.

Every image goes through :func:`to_rgb` first (any PIL mode to 8-bit RGB, transparency composited
on white). :func:`image_transform` then builds the view(s) a model needs:

- ``pixel_values``: the image encoder's input, ``[3, S, S]`` float, normalised with the CLIP / FLAVA
  mean and std;
- ``codebook_pixel_values`` (optional): the same image region at the codebook (visual tokenizer)
  resolution, ``[3, C, C]`` float in ``[0, 1]``, not normalised, for masked image modelling targets.

For pretraining both views come from one random resized crop and one optional horizontal flip, so
the codebook tokens describe exactly the pixels the encoder sees. As in BEiT and FLAVA the codebook
view is Lanczos-3 resampled (PIL's antialiased kernel), but from the encoder's ``S`` px view rather
than from the full-resolution crop: on photographs that differs from resampling the crop directly by
about 0.3 of 255 levels on average (as much as PIL's own ``reducing_gap=2`` shortcut), and takes a
seventh of the time on the photographs of ``benchmarks/data.py``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageTransform",
    "image_transform",
    "lanczos_resize",
    "to_rgb",
]

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
    """Convert a PIL image of any mode to 8-bit RGB, compositing transparent pixels on white.

    An image that is already RGB without a transparent colour is returned as it is, not copied.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.mode == "RGB" and "transparency" not in image.info:
        return image  # already what the transforms need; they never modify it in place
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


@functools.lru_cache(maxsize=32)
def _lanczos_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """Sparse ``[out_size, in_size]`` matrix of antialiased Lanczos-3 resampling along one axis.

    PIL's convention: output sample ``i`` is centred at input coordinate ``(i + 0.5) * scale``; the
    kernel is stretched by ``scale`` when shrinking; taps outside the input are dropped and each
    row's weights are normalised to sum to one.
    """
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 3.0 * stretch
    centres = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    first = (centres - support + 0.5).trunc().clamp(min=0)
    end = (centres + support + 0.5).trunc().clamp(max=in_size)
    index = first[:, None] + torch.arange(int((end - first).max()))
    distance = (index + 0.5 - centres[:, None]) / stretch
    weight = torch.sinc(distance) * torch.sinc(distance / 3) * (distance.abs() < 3)
    weight = torch.where(index < end[:, None], weight, 0.0)
    weight = weight / weight.sum(1, keepdim=True)
    dense = torch.zeros(out_size, in_size, dtype=torch.float64)
    dense.scatter_add_(1, index.clamp(max=in_size - 1).long(), weight)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": only CSR @ dense is used
        warnings.simplefilter("ignore", UserWarning)
        return dense.float().to_sparse_csr()


def lanczos_resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resample ``[C, H, W]`` pixels (any real dtype) to float ``[C, height, width]``, Lanczos-3.

    Matches PIL's ``Image.resize(..., LANCZOS)`` up to its 8-bit rounding (PIL rounds and clips the
    intermediate horizontal pass; here the two passes stay in float), so values may overshoot the
    input's range slightly, as Lanczos ringing does.
    """
    channels, in_h, in_w = pixels.shape
    rows = _lanczos_matrix(in_h, height)
    cols = _lanczos_matrix(in_w, width)
    hwc = pixels.permute(1, 2, 0).to(torch.float32).reshape(in_h, in_w * channels)
    tall = (rows @ hwc).view(height, in_w, channels).transpose(0, 1)  # [in_w, height, C]
    out = cols @ tall.reshape(in_w, height * channels)  # [width, height * C]
    return out.view(width, height, channels).permute(2, 1, 0)


def _check_size(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_range(name: str, value: object, upper: float | None) -> tuple[float, float]:
    """Return ``value`` as an increasing pair of positive floats (at most ``upper``)."""
    if not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a pair of floats, got {value!r}")
    try:
        lo, hi = (float(v) for v in value)
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


def _per_image(
    generator: torch.Generator | Sequence[torch.Generator] | None, count: int
) -> Sequence[torch.Generator | None]:
    """``generator`` as one generator (or None) per image."""
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * count
    if len(generator) != count:
        raise ValueError(f"got {len(generator)} generators for {count} images")
    return generator


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
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)

    def _resized(self, region: torch.Tensor, size: tuple[int, int], flip: bool) -> torch.Tensor:
        """Resize uint8 ``[3, H, W]`` pixels to ``size`` (bicubic, antialiased), flip if asked."""
        pixels = F.resize(region, list(size), InterpolationMode.BICUBIC, antialias=True)
        return F.horizontal_flip(pixels) if flip else pixels

    def _view(self, image: Image.Image, generator: torch.Generator | None) -> torch.Tensor:
        """The uint8 ``[3, S, S]`` encoder view of one image: crop, resize, flip."""
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
            region = F.pil_to_tensor(rgb.crop((left, top, left + crop_w, top + crop_h)))
            return self._resized(region, (size, size), flip)
        # Shorter side to ``size`` (the longer one truncated, as torchvision does), then the
        # central ``size`` x ``size`` crop.
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        top, left = round((new_h - size) / 2), round((new_w - size) / 2)
        resized = self._resized(F.pil_to_tensor(rgb), (new_h, new_w), flip=False)
        return F.crop(resized, top, left, size, size)

    def batch(
        self,
        images: Sequence[Image.Image],
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Transform a list of images into stacked views ``[B, 3, S, S]`` (+ ``[B, 3, C, C]``).

        The same as stacking :meth:`__call__` of each image in turn (same random draws), but each
        view is written straight into the batch, which saves a copy and an allocation per image.
        ``generator`` is one generator drawn from image after image, or a sequence of one per
        image (each image's crop and flip then depend on its own generator only).
        """
        size, side = self.image_size, self.codebook_size
        generators = _per_image(generator, len(images))
        pixels = torch.empty(len(images), 3, size, size)
        codebook = None if side is None else torch.empty(len(images), 3, side, side)
        for i, image in enumerate(images):
            view = self._view(image, generators[i])
            # (x / 255 - mean) / std, in place while the view is still in cache; the same float
            # operations as torchvision's to_dtype(scale=True) + normalize, so the same values
            pixels[i].copy_(view).mul_(1.0 / 255.0).sub_(self._mean).div_(self._std)
            if codebook is not None and side is not None:
                codebook[i] = lanczos_resize(view, side, side)
        out = {"pixel_values": pixels}
        if codebook is not None:
            out["codebook_pixel_values"] = codebook.mul_(1.0 / 255.0).clamp_(0.0, 1.0)
        return out

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Transform one PIL image; randomness uses ``generator`` or the global torch RNG."""
        return {key: value[0] for key, value in self.batch([image], generator).items()}

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
