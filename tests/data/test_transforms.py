"""Tests for RGB conversion and the pretraining / evaluation image transforms."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from flava.data.sources.embedded import SceneSource
from flava.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    ImageTransform,
    image_transform,
    lanczos_resize,
    to_rgb,
)

RED = (220, 20, 30)
BLUE = (10, 40, 230)


def _noise_image(width: int = 200, height: int = 150, seed: int = 0) -> Image.Image:
    """Return a random RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _half_red_half_blue(width: int = 160, height: int = 120) -> Image.Image:
    """Return an image whose left half is red and right half blue."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = RED
    pixels[:, width // 2 :] = BLUE
    return Image.fromarray(pixels)


def _denormalise(pixel_values: torch.Tensor) -> torch.Tensor:
    """Undo the CLIP normalisation, giving values in [0, 1]."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return pixel_values * std + mean


def _red_on_left(view: torch.Tensor) -> bool | None:
    """Return whether a [0, 1] view has red on the left, blue on the right (None: one colour)."""
    left_red = bool(view[0, :, 0].mean() > view[2, :, 0].mean())
    right_red = bool(view[0, :, -1].mean() > view[2, :, -1].mean())
    return None if left_red == right_red else left_red


# ---------------------------------------------------------------- to_rgb


def _check_rgb(image: Image.Image) -> np.ndarray:
    """Convert with to_rgb, check the result is 8-bit RGB of the same size, return its pixels."""
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    pixels = np.asarray(out)
    assert pixels.dtype == np.uint8 and pixels.shape == (image.size[1], image.size[0], 3)
    return pixels


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("1", 1, (255, 255, 255)),
        ("1", 0, (0, 0, 0)),
        ("L", 128, (128, 128, 128)),
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("LA", (40, 255), (40, 40, 40)),
        ("LA", (40, 0), (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("YCbCr", (128, 128, 128), (128, 128, 128)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 0, (0, 0, 0)),
        ("I;16", 200, (200, 200, 200)),
        ("I;16B", 65535, (255, 255, 255)),
        ("I", 65535, (255, 255, 255)),
        ("I", 100, (100, 100, 100)),
        ("F", 1.0, (255, 255, 255)),
        ("F", 0.5, (128, 128, 128)),
        ("F", 200.0, (200, 200, 200)),
    ],
)
def test_to_rgb_constant_images(mode, value, expected):
    pixels = _check_rgb(Image.new(mode, (5, 4), value))
    assert np.abs(pixels.astype(int) - np.array(expected)).max() <= 1


def test_to_rgb_alpha_blends_on_white():
    pixels = _check_rgb(Image.new("RGBA", (3, 3), (0, 0, 0, 128)))
    assert np.abs(pixels.astype(int) - 127).max() <= 1
    pixels = _check_rgb(Image.new("La", (3, 3), (64, 128)))  # premultiplied alpha
    assert np.abs(pixels.astype(int) - 191).max() <= 2


def test_to_rgb_palette_images():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    assert (_check_rgb(palette) == (200, 30, 40)).all()

    transparent = palette.copy()
    transparent.info["transparency"] = 1  # palette index 1 is transparent
    assert (_check_rgb(transparent) == 255).all()

    rgba_palette = Image.new("RGBA", (4, 4), (200, 30, 40, 0)).quantize()
    assert rgba_palette.mode == "P"
    assert (_check_rgb(rgba_palette) == 255).all()

    pa = Image.new("PA", (4, 4), (1, 0))
    pa.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    assert (_check_rgb(pa) == 255).all()


def test_to_rgb_transparent_colour_key():
    grey = Image.new("L", (2, 2), 7)
    grey.info["transparency"] = 7
    assert (_check_rgb(grey) == 255).all()
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    rgb.info["transparency"] = (1, 2, 3)
    assert (_check_rgb(rgb) == 255).all()


def test_to_rgb_high_depth_ranges():
    ramp16 = Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16))
    assert ramp16.mode.startswith("I;16")
    assert _check_rgb(ramp16)[0, :, 0].tolist() == [0, 1, 128, 255]

    big_endian = Image.frombytes("I;16B", (2, 1), np.array([0, 65535], dtype=">u2").tobytes())
    assert _check_rgb(big_endian)[0, :, 0].tolist() == [0, 255]

    wide = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert wide.mode == "I"
    assert _check_rgb(wide)[0, :, 0].tolist() == [0, 128, 255]

    floats = Image.fromarray(np.array([[0.0, 0.25, 1.0, np.nan]], dtype=np.float32))
    assert floats.mode == "F"
    assert _check_rgb(floats)[0, :, 0].tolist() == [0, 64, 255, 0]

    hdr = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], dtype=np.float32))
    assert _check_rgb(hdr)[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    "mode",
    ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]
    + ["I", "I;16", "I;16B", "I;16L", "F"],
)
def test_to_rgb_every_mode(mode):
    image = _noise_image(9, 7).convert("L").convert(mode) if mode.startswith("I") else None
    if image is None:
        image = Image.new(mode, (9, 7))
    _check_rgb(image)


def test_to_rgb_rejects_non_images():
    with pytest.raises(TypeError):
        to_rgb(np.zeros((4, 4, 3), dtype=np.uint8))


# ---------------------------------------------------------------- image_transform


def test_eval_shapes_dtypes_and_determinism():
    transform = image_transform("eval", image_size=64, codebook_size=32)
    image = _noise_image(200, 150)
    first, second = transform(image), transform(image)
    assert set(first) == {"pixel_values", "codebook_pixel_values"}
    assert first["pixel_values"].shape == (3, 64, 64)
    assert first["codebook_pixel_values"].shape == (3, 32, 32)
    for key in first:
        assert first[key].dtype == torch.float32
        assert torch.equal(first[key], second[key])
    codebook = first["codebook_pixel_values"]
    assert codebook.min() >= 0 and codebook.max() <= 1
    assert set(image_transform("eval", image_size=64)(image)) == {"pixel_values"}


@pytest.mark.parametrize("size", [(200, 150), (150, 200), (64, 64), (30, 41)])
def test_eval_matches_resize_then_centre_crop(size):
    image = _noise_image(*size)
    ours = image_transform("eval", image_size=64)(image)["pixel_values"]
    expected = F.pil_to_tensor(image)
    expected = F.resize(expected, [64], InterpolationMode.BICUBIC, antialias=True)
    expected = F.center_crop(expected, [64, 64])
    expected = F.normalize(F.to_dtype(expected, torch.float32, scale=True), CLIP_MEAN, CLIP_STD)
    assert torch.equal(ours, expected)  # the same float operations, so the same values


def test_pretrain_shapes_and_dtypes():
    transform = image_transform("pretrain", image_size=48, codebook_size=24)
    out = transform(_noise_image())
    assert out["pixel_values"].shape == (3, 48, 48)
    assert out["codebook_pixel_values"].shape == (3, 24, 24)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert 0 <= out["codebook_pixel_values"].min() and out["codebook_pixel_values"].max() <= 1


@pytest.mark.parametrize("kind", ["pretrain", "eval"])
def test_constant_colour_is_normalised(kind):
    colour = (200, 100, 50)
    out = image_transform(kind, image_size=32, codebook_size=16)(Image.new("RGB", (80, 60), colour))
    expected = [(c / 255 - m) / s for c, m, s in zip(colour, CLIP_MEAN, CLIP_STD, strict=True)]
    for channel in range(3):
        torch.testing.assert_close(
            out["pixel_values"][channel], torch.full((32, 32), expected[channel]), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            out["codebook_pixel_values"][channel],
            torch.full((16, 16), colour[channel] / 255),
            atol=1e-6,
            rtol=0,
        )


def test_pretrain_views_are_aligned():
    transform = image_transform("pretrain", image_size=64, codebook_size=32, scale=(0.3, 1.0))
    image = _half_red_half_blue()
    sides, fractions = [], []
    for seed in range(40):
        out = transform(image, generator=torch.Generator().manual_seed(seed))
        main_view = _denormalise(out["pixel_values"])
        codebook_view = out["codebook_pixel_values"]
        assert _red_on_left(main_view) == _red_on_left(codebook_view)
        # Same region: the red / blue boundary sits at the same relative column in both views.
        main_red = float((main_view[0] > main_view[2]).float().mean())
        codebook_red = float((codebook_view[0] > codebook_view[2]).float().mean())
        assert abs(main_red - codebook_red) <= 1 / 32
        sides.append(_red_on_left(main_view))
        fractions.append(main_red)
    assert True in sides and False in sides, "flip should happen for some seeds and not for others"
    assert max(fractions) - min(fractions) > 0.2, "crops should differ between seeds"


@pytest.mark.parametrize("size", [(160, 120), (120, 160), (301, 97)])
def test_eval_views_are_aligned(size):
    out = image_transform("eval", image_size=64, codebook_size=32)(_half_red_half_blue(*size))
    main_view = _denormalise(out["pixel_values"])
    codebook_view = out["codebook_pixel_values"]
    main_red = float((main_view[0] > main_view[2]).float().mean())
    codebook_red = float((codebook_view[0] > codebook_view[2]).float().mean())
    assert abs(main_red - 0.5) <= 1 / 64 and abs(codebook_red - 0.5) <= 1 / 32
    assert _red_on_left(main_view) is True and _red_on_left(codebook_view) is True


def test_pretrain_without_flip_keeps_orientation():
    transform = image_transform("pretrain", image_size=32, codebook_size=16, hflip=False)
    image = _half_red_half_blue()
    for seed in range(10):
        out = transform(image, generator=torch.Generator().manual_seed(seed))
        assert _red_on_left(_denormalise(out["pixel_values"])) is True
        assert _red_on_left(out["codebook_pixel_values"]) is True


def test_pretrain_randomness_follows_generator_and_global_rng():
    transform = image_transform("pretrain", image_size=32, scale=(0.2, 1.0))
    image = _noise_image()
    first = transform(image, generator=torch.Generator().manual_seed(3))["pixel_values"]
    again = transform(image, generator=torch.Generator().manual_seed(3))["pixel_values"]
    assert torch.equal(first, again)
    torch.manual_seed(123)
    global_a = transform(image)["pixel_values"]
    torch.manual_seed(123)
    global_b = transform(image)["pixel_values"]
    global_c = transform(image)["pixel_values"]
    assert torch.equal(global_a, global_b)
    assert not torch.equal(global_b, global_c)


def test_pretrain_handles_extreme_aspect_ratios_and_tiny_images():
    transform = image_transform("pretrain", image_size=16, codebook_size=8)
    for size in [(500, 10), (10, 500), (1, 1), (3, 2)]:
        out = transform(_noise_image(*size))
        assert out["pixel_values"].shape == (3, 16, 16)
        assert out["codebook_pixel_values"].shape == (3, 8, 8)


def test_transform_accepts_any_mode():
    transform = image_transform("pretrain", image_size=16, codebook_size=8)
    out = transform(Image.new("I;16", (20, 20), 65535))
    torch.testing.assert_close(out["codebook_pixel_values"], torch.ones(3, 8, 8))


def _scene_images(count: int = 3) -> list[Image.Image]:
    """Generated 256 px scenes: shapes with sharp edges on plain, striped or dotted backgrounds."""
    source = SceneSource("train", size=count, image_size=256)
    rng = np.random.default_rng(0)
    return [source.item(i, "image", rng).image.convert("RGB") for i in range(count)]


def _pil_lanczos(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """PIL's Lanczos resize as float [3, H, W] in 0..255."""
    resized = image.resize((width, height), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.array(resized)).permute(2, 0, 1).float()


@pytest.mark.parametrize("size", [(112, 112), (37, 90), (300, 256), (256, 256)])
def test_lanczos_resize_matches_pil(size):
    # PIL rounds and clips its intermediate pass to 8 bits, so single values differ by a level or
    # two at sharp edges; on average the two agree to a small fraction of a level.
    for image in _scene_images():
        pixels = F.pil_to_tensor(image)
        ours = lanczos_resize(pixels, *size)
        assert ours.shape == (3, *size) and ours.dtype == torch.float32
        diff = (ours.round().clamp(0, 255) - _pil_lanczos(image, *size)).abs()
        assert diff.mean() <= 0.2 and diff.max() <= 3


def test_codebook_view_is_close_to_lanczos_of_the_crop():
    # The codebook view is resampled from the encoder view, not from the original pixels; it must
    # stay within a fraction of a level of a direct Lanczos resize of the same region.
    transform = image_transform(
        "pretrain", image_size=128, codebook_size=64, scale=(1, 1), ratio=(1, 1), hflip=False
    )
    for image in _scene_images():
        codebook = transform(image)["codebook_pixel_values"] * 255
        diff = (codebook - _pil_lanczos(image, 64, 64)).abs()
        assert diff.mean() <= 0.5 and diff.quantile(0.99) <= 2


@pytest.mark.parametrize("kind", ["pretrain", "eval"])
def test_batch_equals_stacked_single_transforms(kind):
    transform = image_transform(kind, image_size=32, codebook_size=16, scale=(0.3, 1.0))
    images = [_noise_image(90, 70, seed=1), _half_red_half_blue(), _noise_image(40, 120, seed=2)]
    batch = transform.batch(images, generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    singles = [transform(image, generator=generator) for image in images]
    assert set(batch) == {"pixel_values", "codebook_pixel_values"}
    for key, value in batch.items():
        assert torch.equal(value, torch.stack([single[key] for single in singles]))


def test_transform_is_picklable_and_has_repr():
    transform = image_transform("pretrain", image_size=32, codebook_size=16)
    clone = pickle.loads(pickle.dumps(transform))
    assert isinstance(clone, ImageTransform)
    assert repr(clone) == repr(transform)
    assert "pretrain" in repr(transform) and "codebook_size=16" in repr(transform)
    image = _noise_image()
    a = transform(image, generator=torch.Generator().manual_seed(0))
    b = clone(image, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["pixel_values"], b["pixel_values"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "train"},
        {"image_size": 0},
        {"image_size": -3},
        {"image_size": 22.5},
        {"image_size": True},
        {"codebook_size": 0},
        {"scale": (0.0, 1.0)},
        {"scale": (0.9, 0.5)},
        {"scale": (0.5, 1.5)},
        {"scale": 0.5},
        {"mean": (0.5, 0.5)},
        {"std": (0.5, 0.0, 0.5)},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError) as info:
        image_transform(**kwargs)
    assert "\n" not in str(info.value)
