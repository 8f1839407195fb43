"""onnxruntime vs PyTorch eager on FLAVA's image and text encoders: the same embeddings (to 1e-4)
and images/s, texts/s.

    python benchmarks/onnx_vs_pytorch.py                        # flava_full, random weights
    python benchmarks/onnx_vs_pytorch.py --preset tiny --rounds 1

A randomly initialised model of the preset is exported with `flava.checkpoints.onnx.export_onnx`
(what `python -m flava.convert SRC DST --to onnx` runs) and read back with `OnnxEncoders`. Both
sides get the same batch (normalised pixels; token ids padded to --text-length, rows of 60% to
100% of it) and the same number of threads. Per modality: one warm-up batch per side, the
largest |onnxruntime - PyTorch| over the batch's embeddings, then --rounds rounds of ABBA
(PyTorch, onnxruntime, onnxruntime, PyTorch); the rate is the batch over the median time.
(Not named onnx.py: run as a script, a file of that name would shadow the onnx package.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference import inputs
from machine import describe, log, machine_info, report_head, write_report

SIDES = ("pytorch", "onnxruntime")
TOLERANCE = 1e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="flava_full")
    p.add_argument("--image-batch", type=int, default=16)
    p.add_argument("--text-batch", type=int, default=64)
    p.add_argument("--text-length", type=int, default=77, help="padded text length (default 77)")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds per modality (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of both sides")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def timed(fn: Callable[[], Any]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(fns: dict[str, Callable[[], Any]], rounds: int, what: str) -> dict[str, list[float]]:
    """Seconds per batch of each side over `rounds` rounds of ABBA."""
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for side in (*SIDES, *SIDES[::-1]):
            times[side].append(timed(fns[side]))
            log(f"  {what} round {r + 1}/{rounds} {side}: {times[side][-1]:.3f} s")
    return times


def modality(
    what: str, fns: dict[str, Callable[[], Any]], batch: int, rounds: int
) -> dict[str, Any]:
    """Warm-up, the largest difference, ABBA timings, rates of one modality."""
    ref = fns["pytorch"]().numpy()
    got = fns["onnxruntime"]()
    diff = float(np.abs(got - ref).max())
    log(f"  {what}: max |onnxruntime - pytorch| {diff:.2e} over {ref.shape} embeddings")
    times = measure(fns, rounds, what)
    rates = {side: batch / statistics.median(times[side]) for side in SIDES}
    return {
        "batch": batch,
        "max_abs_diff": diff,
        "within_tolerance": diff <= TOLERANCE,
        "seconds": times,
        "items_per_s": rates,
        "onnxruntime_over_pytorch": rates["onnxruntime"] / rates["pytorch"],
    }


def main(argv: list[str] | None = None) -> dict:
    """Export, compare, time; print a table; optionally write JSON."""
    from flava.checkpoints.onnx import OnnxEncoders, export_onnx
    from flava.model import FlavaModel, preset

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    log(describe(machine))
    import onnxruntime

    log(f"onnxruntime {onnxruntime.__version__}, {args.threads} threads each side")
    torch.manual_seed(0)
    model = FlavaModel(preset(args.preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        probe = export_onnx(model, tmp)
        export_s = time.perf_counter() - start
        log(f"exported in {export_s:.1f} s; probe max |diff| {probe}")
        encoders = OnnxEncoders(tmp, threads=args.threads)
    images = inputs(model.config, args.image_batch, args.text_length, torch.device("cpu"))
    texts = inputs(model.config, args.text_batch, args.text_length, torch.device("cpu"))
    pixels = images["pixel_values"]
    ids, mask = texts["input_ids"], texts["attention_mask"]
    np_pixels, np_ids, np_mask = pixels.numpy(), ids.numpy(), mask.numpy()
    with torch.inference_mode():
        image = {
            "pytorch": lambda: model.encode_image(pixels),
            "onnxruntime": lambda: encoders.encode_image(np_pixels),
        }
        text = {
            "pytorch": lambda: model.encode_text(ids, mask),
            "onnxruntime": lambda: encoders.encode_text(np_ids, np_mask),
        }
        summary = {
            "image": modality("image", image, args.image_batch, args.rounds),
            "text": modality("text", text, args.text_batch, args.rounds),
        }
    print(f"{'modality':<10}{'side':<13}{'median s/batch':>16}{'items/s':>10}{'max |diff|':>12}")
    for what, row in summary.items():
        for side in SIDES:
            median = statistics.median(row["seconds"][side])
            rate = row["items_per_s"][side]
            print(f"{what:<10}{side:<13}{median:>16.3f}{rate:>10.2f}{row['max_abs_diff']:>12.2e}")
        print(f"{what:<10}{'ort/pytorch':<13}{row['onnxruntime_over_pytorch']:>26.3f}x")
    ok = all(row["within_tolerance"] for row in summary.values())
    print(f"embeddings equal to {TOLERANCE:g}: {'yes' if ok else 'NO'}")
    raw = sys.argv[1:] if argv is None else argv
    report = {
        **report_head("onnx_vs_pytorch.py", raw, args, machine),
        "onnxruntime": onnxruntime.__version__,
        "export_seconds": export_s,
        **summary,
    }
    write_report(args.json, report)
    return report


if __name__ == "__main__":
    main()
