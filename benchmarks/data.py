"""Samples per second per core of the pretraining input pipeline, against a decode+resize floor.

    python benchmarks/data.py                     # 224 px (flava_full), 384 samples per source
    python benchmarks/data.py --samples 128 --files 128

The pipeline is `flava.data.collate.BatchBuilder` as the training DataModule builds it:
decode, random resized crop at 224 px (pairs are never flipped) plus the 112 px codebook view,
BEiT block masking, WordPiece tokenising, 15% text masking and collation into a pair ("vl")
batch. It runs on one core (torch and PIL single-threaded, no worker processes) over two
sources: the embedded generated scenes (`SceneSource`; generating a scene is its "decode") and
real JPEG / PNG files written from scikit-image's sample photographs (random crops and sizes;
generated textures when scikit-image is missing). The floor is decode + one resize to 224x224
per sample, the least any pipeline must do; the table also splits the pipeline into its stages.

Bounded in wall time: per source, the warm-up and the timed rounds stop once --max-seconds have
passed (each timed function reads the clock after every batch and stops there; every function
still gets at least one timed batch), with a progress line after every round. The report starts
with the CPU (model, torch's CPU capability, native bf16 or not).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from flava.data.collate import BatchBuilder
from flava.data.sources.embedded import SceneSource
from flava.data.sources.sample import Sample
from flava.data.tokenizer import load_tokenizer
from flava.data.transforms import image_transform
from flava.objectives.masking import BlockMaskGenerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, log, machine_info, write_report

Timed = Callable[[float], int]  # deadline (perf_counter) -> samples processed

WORDS = (
    "a photo of the {} next to a {} on a sunny day",
    "close-up of a {} with a blurry {} in the background",
    "an old {} and a small {} seen from above",
    "two {} sitting beside a {} in the evening light",
)
NOUNS = ("cat", "coffee cup", "rocket", "astronaut", "horse", "street", "window", "tree", "boat")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image-size", type=int, default=224, help="model input side (default 224)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--samples", type=int, default=384, help="samples timed per source")
    p.add_argument("--files", type=int, default=300, help="image files written (JPEG + PNG)")
    p.add_argument("--scene-size", type=int, default=256, help="side of the generated scenes")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (best is reported)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="per source: no further batch or round starts after this many seconds of warm-up "
        "and rounds (default 120; at least one timed batch per function)",
    )
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def _photos() -> list[np.ndarray]:
    """scikit-image's RGB sample photographs (uint8 HxWx3), or generated textures without it."""
    try:
        from skimage import data
    except ImportError:
        data = None
    out = []
    if data is not None:
        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
            with _quiet():
                img = getattr(data, name)()
            if img.ndim == 3 and img.shape[2] == 3:
                out.append(np.ascontiguousarray(img))
    if not out:
        rng = np.random.default_rng(0)
        for _ in range(4):
            base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((512, 512), Image.Resampling.BICUBIC)
            noise = rng.normal(0, 12, (512, 512, 3))
            out.append(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
    return out


class _quiet:
    """Silence scikit-image's download / cache messages on stderr."""

    def __enter__(self) -> None:
        self._err = sys.stderr
        sys.stderr = open(os.devnull, "w")

    def __exit__(self, *exc: object) -> None:
        sys.stderr.close()
        sys.stderr = self._err


def write_files(directory: Path, count: int, seed: int = 0) -> list[tuple[Path, str]]:
    """`count` images (every other one JPEG q90 / PNG), random crops 320-640 px, with captions."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    files = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = Image.fromarray(photo[top : top + ch, left : left + cw])
        side = int(rng.integers(320, 641))
        scale = side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        path = directory / (f"{i:05d}.jpg" if i % 2 == 0 else f"{i:05d}.png")
        if path.suffix == ".jpg":
            img.save(path, quality=90)
        else:
            img.save(path)
        words = rng.choice(NOUNS, 2, replace=False)
        files.append((path, WORDS[i % len(WORDS)].format(*words)))
    return files


def decode(path: Path) -> Image.Image:
    """Open and fully decode one image file."""
    img = Image.open(path)
    img.load()
    return img


def floor_resize(img: Image.Image, size: int) -> torch.Tensor:
    """The floor's one resize: to size x size, as the pipeline resizes (bicubic, antialiased)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return F.resize(F.pil_to_tensor(rgb), [size, size], InterpolationMode.BICUBIC, antialias=True)


def best_rates(
    fns: dict[str, Timed], args: argparse.Namespace, source: str
) -> tuple[dict[str, float], int]:
    """(best samples/s of each function, rounds run) over up to --repeats rounds within
    --max-seconds.

    Each function returns the samples it processed before the deadline. Calling them in turn
    within every round (not each `repeats` times in a row) lets a slow spell of the machine hit all
    of them alike.
    """
    start = time.perf_counter()
    deadline = start + args.max_seconds
    for fn in fns.values():
        fn(deadline)  # warm-up
    best = dict.fromkeys(fns, 0.0)
    rounds = 0
    while rounds < args.repeats:
        for name, fn in fns.items():
            begin = time.perf_counter()
            n = fn(deadline)
            best[name] = max(best[name], n / (time.perf_counter() - begin))
        rounds += 1
        elapsed = time.perf_counter() - start
        log(f"  {source}: round {rounds}/{args.repeats} done ({elapsed:.1f} s)")
        if time.perf_counter() >= deadline and rounds < args.repeats:
            log(f"  {source}: --max-seconds {args.max_seconds:g} reached after {rounds} rounds")
            break
    return best, rounds


def over(batches: Sequence[Sequence], work: Callable[[Sequence], object], deadline: float) -> int:
    """Call `work` on each batch until the batches or the time run out; samples processed."""
    n = 0
    for batch in batches:
        work(batch)
        n += len(batch)
        if time.perf_counter() >= deadline:
            break
    return n


def stage_functions(
    items: Callable[[Sequence[int]], list[Sample]],
    n: int,
    builder: BatchBuilder,
    args: argparse.Namespace,
) -> dict[str, Timed]:
    """The pipeline, the decode + resize floor and each stage as deadline-bounded functions."""
    batches = [range(i, min(i + args.batch_size, n)) for i in range(0, n, args.batch_size)]
    size = args.image_size
    decoded = [items(idx) for idx in batches]  # stage timings on already decoded samples

    def pipeline(deadline: float) -> int:
        g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
        return over(batches, lambda idx: builder(items(idx), "vl", g, rng), deadline)

    def floor(deadline: float) -> int:
        def work(idx: Sequence[int]) -> None:
            torch.stack([floor_resize(item.image, size) for item in items(idx)])

        return over(batches, work, deadline)

    def transforms(deadline: float) -> int:
        g = torch.Generator().manual_seed(0)

        def work(batch: Sequence[Sample]) -> None:
            views = [builder.transform(i.image, generator=g) for i in batch]
            {k: torch.stack([v[k] for v in views]) for k in views[0]}

        return over(decoded, work, deadline)

    def masks(deadline: float) -> int:
        rng = np.random.default_rng(0)
        return over(decoded, lambda b: builder.mask_generator.batch(len(b), rng), deadline)

    def texts(deadline: float) -> int:
        g = torch.Generator().manual_seed(0)
        return over(decoded, lambda b: builder.texts([i.text for i in b], g), deadline)

    return {
        "pipeline": pipeline,
        "floor_decode_resize": floor,
        "stage_decode": lambda deadline: over(batches, items, deadline),
        "stage_transforms_and_collate": transforms,
        "stage_block_masks": masks,
        "stage_tokenise_and_text_masking": texts,
    }


def measure(
    name: str,
    items: Callable[[Sequence[int]], list[Sample]],
    n: int,
    builder: BatchBuilder,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Pipeline, floor and per-stage rates (samples/s on one core) for one source."""
    log(f"  {name}: decoding {n} samples for the stage timings, then warm-up and rounds...")
    rates, rounds = best_rates(stage_functions(items, n, builder, args), args, name)
    rates["pipeline_over_floor"] = rates["pipeline"] / rates["floor_decode_resize"]
    rates["rounds"] = rounds
    return rates


def print_table(results: dict[str, dict[str, float]]) -> None:
    """One row of samples/s per source."""
    print(
        f"\n{'source':<10}{'pipeline':>10}{'floor':>10}{'ratio':>9}{'decode':>10}"
        f"{'transform':>11}{'masks':>10}{'text':>10}   (samples/s per core)"
    )
    for key, rates in results.items():
        name = "jpeg+png" if key == "files" else key
        print(
            f"{name:<10}{rates['pipeline']:>10.1f}{rates['floor_decode_resize']:>10.1f}"
            f"{rates['pipeline_over_floor']:>8.2f}x{rates['stage_decode']:>10.1f}"
            f"{rates['stage_transforms_and_collate']:>11.1f}{rates['stage_block_masks']:>10.0f}"
            f"{rates['stage_tokenise_and_text_masking']:>10.0f}"
        )


def main(argv: list[str] | None = None) -> dict:
    """Measure both sources, print a table, optionally write JSON."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    machine = machine_info()
    log(describe(machine))
    grid = args.image_size // 16
    builder = BatchBuilder(
        load_tokenizer(),
        image_transform("pretrain", image_size=args.image_size, codebook_size=grid * 8),
        BlockMaskGenerator(grid),
        text_max_length=77,
        mlm_probability=0.15,
    )
    log(
        f"input pipeline, one core: {args.image_size} px + {grid * 8} px codebook view, "
        f"{BlockMaskGenerator(grid).num_masking_patches}/{grid * grid} masked patches, "
        f"77 tokens, batch {args.batch_size}, best of {args.repeats} rounds, at most "
        f"{args.max_seconds:g} s per source"
    )
    results = {}
    scenes = SceneSource("train", size=args.samples, image_size=args.scene_size)
    rng = np.random.default_rng(0)
    results["scenes"] = measure(
        "scenes", lambda idx: [scenes.item(i, "vl", rng) for i in idx], args.samples, builder, args
    )
    with tempfile.TemporaryDirectory(prefix="flava-data-bench-") as tmp:
        log(f"writing {args.files} JPEG / PNG files...")
        files = write_files(Path(tmp), args.files)
        n = min(args.samples, len(files))

        def file_items(idx: Sequence[int]) -> list[Sample]:
            return [Sample(str(i), decode(files[i][0]), [files[i][1]]) for i in idx]

        results["files"] = measure("jpeg+png", file_items, n, builder, args)
        sizes = [os.path.getsize(p) for p, _ in files]
    print_table(results)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/data.py", *(argv or sys.argv[1:])]),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
        "load_average": os.getloadavg(),
        "files_mean_kib": statistics.mean(sizes) / 1024,
        "rates_samples_per_s_per_core": results,
    }
    write_report(args.json, report)
    return report


if __name__ == "__main__":
    main()
