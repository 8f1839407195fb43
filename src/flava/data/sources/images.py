"""Image bytes: fetching a URL or path, decoding (the one place images are decoded), formats.

Images are decoded by `decode_image` only, and left in their mode: the image transforms convert
every mode with `flava.data.transforms.to_rgb`. An image that cannot be used raises `BadSample`
with its reason.
"""

from __future__ import annotations

import io
import urllib.request
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from flava.data.sources.errors import BadSample

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm"}
)
"""File extensions read as images, everywhere (folders, shards, records)."""
LISTED_NON_RASTER = frozenset({"svg", "svgz", "heic", "heif", "avif", "pdf"})
"""Extensions a folder scan lists although they cannot be decoded, so each is counted as a skipped
`unsupported_image_format` sample instead of vanishing without a word."""


_USER_AGENT = "flava/0.1 (image fetcher)"
# Replacement draws for a random-access sample that cannot be read.


def fetch(location: str, timeout: float = 10.0) -> bytes:
    """The bytes of an http(s) URL (one try, short timeout) or a local file; OSError if not."""
    if location.startswith(("http://", "https://")):
        request = urllib.request.Request(location, headers={"User-Agent": _USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    return Path(location).expanduser().read_bytes()


def fetch_image(location: str) -> bytes:
    """The bytes of an image URL or path; `BadSample("image_unavailable")` if they cannot be had."""
    try:
        return fetch(location)
    except (OSError, ValueError) as exc:
        raise BadSample("image_unavailable", f"cannot fetch {location}: {exc}") from None


def _unsupported_format(data: bytes) -> str | None:
    """The name of a known non-raster or unsupported format from its first bytes, else None."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype svg")) or b"<svg" in head:
        return "SVG"
    if head.startswith(b"%pdf"):
        return "PDF"
    if data[4:8] == b"ftyp":
        return "HEIC/AVIF"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    return None


def decode_image(data: bytes | Image.Image | str | None) -> Image.Image:
    """A PIL image from encoded bytes or a URL / path (any format and mode PIL reads).

    Raises `BadSample` naming why an image cannot be used: zero bytes, truncated, an
    unsupported format (SVG, PDF, HEIC), unreadable, a decompression bomb (more pixels than
    `PIL.Image.MAX_IMAGE_PIXELS`), or unavailable (dead URL, missing file).
    """
    if isinstance(data, Image.Image):
        return data
    if data is None:
        raise BadSample("missing_image", "no image")
    if isinstance(data, str):
        data = fetch_image(data)
    if not data:
        raise BadSample("zero_byte_image", "the image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadSample("decompression_bomb", str(exc).split(" could be")[0]) from None
    except UnidentifiedImageError:
        fmt = _unsupported_format(data)
        if fmt:
            raise BadSample("unsupported_image_format", f"{fmt} is not a raster image") from None
        raise BadSample("unreadable_image", "not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = "truncated_image" if "truncated" in str(exc).lower() else "unreadable_image"
        raise BadSample(reason, f"cannot decode the image: {exc}") from None
    return ImageOps.exif_transpose(image) or image


def image_format(data: bytes) -> str | None:
    """ "jpg", "png" or "webp" from the magic bytes of an encoded image, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder` (recursively, sorted), by extension; SVG, HEIC, AVIF and
    PDF files are listed too, to be counted as skipped when decoded."""
    listed = IMAGE_EXTENSIONS | LISTED_NON_RASTER
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in listed and p.is_file()
    )
