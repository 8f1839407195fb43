"""Small real data sets built on the fly from scikit-image's sample images (tests only).

Images come in many PIL modes and file formats (RGB JPEG, L / RGBA / 1 / LA / I;16 PNG, P GIF,
CMYK JPEG, WEBP) so every decoder path and `to_rgb` conversion is exercised.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# (skimage.data name, captions, class)
PICTURES = [
    ("astronaut", ["an astronaut in a white suit", "a woman in a space suit"], "people"),
    ("camera", ["a man with a camera on a tripod"], "people"),
    ("coffee", ["a cup of coffee on a saucer", "coffee in a white cup"], "objects"),
    ("chelsea", ["a ginger cat looking to the side"], "animals"),
    ("rocket", ["a rocket on the launch pad"], "objects"),
    ("coins", ["old coins on a dark background"], "objects"),
    ("horse", ["the black silhouette of a horse"], "animals"),
    ("logo", ["the scikit-image logo", "a snake logo"], "objects"),
    ("moon", ["the surface of the moon"], "textures"),
    ("page", ["a page of printed text"], "objects"),
    ("clock", ["a clock on a wall"], "objects"),
    ("hubble_deep_field", ["galaxies in the deep sky"], "textures"),
    ("immunohistochemistry", ["stained tissue under a microscope"], "textures"),
    ("colorwheel", ["a wheel of colours"], "textures"),
    ("brick", ["a brick wall"], "textures"),
    ("cat", ["a cat with green eyes"], "animals"),
]
# PIL mode and file format per picture, cycled.
MODES = [
    ("RGB", "JPEG", "jpg"),
    ("L", "PNG", "png"),
    ("RGBA", "PNG", "png"),
    ("1", "PNG", "png"),
    ("P", "GIF", "gif"),
    ("I;16", "PNG", "png"),
    ("CMYK", "JPEG", "jpg"),
    ("LA", "PNG", "png"),
    ("RGB", "WEBP", "webp"),
]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Wikitext is a corpus of articles from Wikipedia.",
    "Rain fell on the plains of Spain all afternoon.",
    "A paragraph about the history of astronomy and telescopes.",
    "Cats sleep for most of the day and hunt at dusk.",
    "The river flows north through three countries.",
]


def picture(name: str, mode: str, size: int = 48) -> Image.Image:
    """skimage.data `name` resized to about `size` px, converted to PIL `mode`."""
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array)
    image.thumbnail((size, size))
    if mode == "I;16":
        values = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(values.astype("<u2"))
    if mode == "P":
        return image.convert("RGB").quantize(16)
    return image.convert(mode)


def pictures(count: int = 16, size: int = 48) -> list[tuple[str, Image.Image, str, str]]:
    """(file name, PIL image, PIL format, class) for `count` pictures in varied modes."""
    out = []
    for i in range(count):
        name, _, cls = PICTURES[i % len(PICTURES)]
        mode, fmt, ext = MODES[i % len(MODES)]
        out.append((f"{i:03d}_{name}.{ext}", picture(name, mode, size), fmt, cls))
    return out


def captions_of(i: int) -> list[str]:
    """The captions of picture `i`."""
    return list(PICTURES[i % len(PICTURES)][1])


def captions_folder(root: Path, count: int = 16, fmt: str = "jsonl") -> Path:
    """root/images/* with captions.jsonl (caption or captions) or captions.csv (row per caption)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (file, image, pil_format, _) in enumerate(pictures(count)):
        image.save(root / "images" / file, format=pil_format)
        rows.append((f"images/{file}", captions_of(i)))
    if fmt == "csv":
        with (root / "captions.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            for rel, caps in rows:
                for cap in caps:
                    writer.writerow([rel, cap])
    else:
        with (root / "captions.jsonl").open("w") as f:
            for rel, caps in rows:
                row = {"image": rel, "caption": caps[0]} if len(caps) == 1 else None
                row = row or {"image": rel, "captions": caps}
                f.write(json.dumps(row) + "\n")
    return root


def class_folder(root: Path, count: int = 16) -> Path:
    """root/<class>/<image> for `count` pictures."""
    for file, image, pil_format, cls in pictures(count):
        (root / cls).mkdir(parents=True, exist_ok=True)
        image.save(root / cls / file, format=pil_format)
    return root


def text_files(root: Path, lines: int = 24) -> Path:
    """root/corpus.txt (one document per line, blank lines between) and root/more.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    docs = [f"{TEXTS[i % len(TEXTS)]} (document {i})" for i in range(lines)]
    (root / "corpus.txt").write_text("\n\n".join(docs[: lines // 2]) + "\n")
    with (root / "more.jsonl").open("w") as f:
        for doc in docs[lines // 2 :]:
            f.write(json.dumps({"text": doc, "id": doc[-3:]}) + "\n")
        f.write(json.dumps({"other": "no text field"}) + "\n")
    return root


def hf_saved(root: Path, count: int = 16) -> Path:
    """A Hugging Face DatasetDict (train, validation) with image, caption, label, saved to disk."""
    import datasets

    datasets.disable_progress_bars()
    pics = pictures(count)
    classes = sorted({c for *_, c in pics})
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "label": datasets.ClassLabel(names=classes),
            "extra": datasets.Value("int32"),
        }
    )
    data = {
        "image": [p[1] for p in pics],
        "caption": [captions_of(i)[0] for i in range(count)],
        "label": [classes.index(p[3]) for p in pics],
        "extra": list(range(count)),
    }
    ds = datasets.Dataset.from_dict(data, features=features)
    split = datasets.DatasetDict({"train": ds, "validation": ds.select(range(count // 2))})
    split.save_to_disk(str(root))
    return root


def tar_file(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar file at `path` holding (member name, bytes) in order (webdataset shards)."""
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


# The files a real folder holds besides good pictures (name, bytes): each must be skipped and
# counted under its reason, never raise.
SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"></svg>\n'
)
BAD_FILES = {
    "vector.svg": ("unsupported_image_format", SVG),
    "empty.png": ("zero_byte_image", b""),
}
MESSY_MODES = [
    ("RGB", "JPEG", "jpg"),
    ("RGBA", "PNG", "png"),
    ("P", "PNG", "png"),
    ("L", "PNG", "png"),
    ("I;16", "PNG", "png"),
]


def truncated_png(size: int = 48) -> bytes:
    """A PNG of a real photograph cut short (the first half of its bytes)."""
    out = io.BytesIO()
    picture("astronaut", "RGB", size).save(out, format="PNG")
    data = out.getvalue()
    return data[: len(data) // 2]


def messy_files(count: int = 10, size: int = 48) -> list[tuple[str, bytes, str | None]]:
    """(file name, bytes, skip reason or None): photographs as JPEG / PNG in RGB, RGBA, P, L and
    I;16, then an SVG, a zero-byte file and a truncated PNG."""
    out: list[tuple[str, bytes, str | None]] = []
    for i in range(count):
        name = PICTURES[i % len(PICTURES)][0]
        mode, fmt, ext = MESSY_MODES[i % len(MESSY_MODES)]
        buffer = io.BytesIO()
        picture(name, mode, size).save(buffer, format=fmt)
        out.append((f"{i:03d}_{name}_{mode.replace(';', '')}.{ext}", buffer.getvalue(), None))
    for name, (reason, data) in BAD_FILES.items():
        out.append((name, data, reason))
    out.append(("truncated.png", truncated_png(size), "truncated_image"))
    return out


def messy_captions_folder(root: Path, count: int = 10) -> Path:
    """root/images/* (good and bad files) with captions.jsonl whose caption field is `text`;
    the last good picture's caption is empty (skipped as empty_text where a caption is needed)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    with (root / "captions.jsonl").open("w") as f:
        for i, (file, data, _) in enumerate(messy_files(count)):
            (root / "images" / file).write_bytes(data)
            text = captions_of(i)[0] if i != count - 1 else "  "
            f.write(json.dumps({"image": f"images/{file}", "text": text}) + "\n")
    return root


def messy_class_folder(root: Path, count: int = 12) -> Path:
    """root/<class>/<image> of real photographs in mixed modes, plus the bad files in one class."""
    for i, (file, data, reason) in enumerate(messy_files(count)):
        cls = PICTURES[i % len(PICTURES)][2] if reason is None else "objects"
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / file).write_bytes(data)
    return root
