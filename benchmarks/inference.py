"""Image and text embedding throughput of ours vs transformers' FlavaModel on the same weights.

    python benchmarks/inference.py                       # flava_full, batch 64
    python benchmarks/inference.py --preset tiny --steps 5

Ours: `FlavaModel.encode_image` / `encode_text` (projected CLS). Theirs: `get_image_features` /
`get_text_features` (which project every position; we take the CLS row and check that it equals
ours). Both run in eval mode under `torch.inference_mode()` in one process, batches alternating
ours/theirs so that a shared machine's load hits both alike.

Bounded in wall time: the matmul peak of the run's precision only, within --peak-seconds; per
modality, no further pair of timed batches starts once --max-seconds have passed (the clock is
read after every batch; at least one timed batch per side). The report starts with the CPU
(model, torch's CPU capability, native bf16 or not).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import (
    describe,
    log,
    machine_info,
    matmul_peak,
    slow_bf16_note,
    sync,
    write_report,
)
from train_step import CLS_ID, PAD_ID, SEP_ID

SIDES = ("ours", "transformers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="flava_full")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed batches per side, after 1 warm-up (fewer once --max-seconds have passed)",
    )
    p.add_argument("--text-length", type=int, default=77, help="padded text length (default 77)")
    p.add_argument("--precision", choices=("32", "bf16"), default="32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        help="per modality: no further pair of timed batches starts after this many seconds "
        "(default 300; at least one timed batch per side)",
    )
    p.add_argument(
        "--peak-seconds",
        type=float,
        default=4.0,
        help="wall-time budget of the matmul-peak measurement (default 4)",
    )
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def build(preset_name: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, theirs): transformers' FlavaModel randomly initialised, converted into ours."""
    import transformers

    from flava.checkpoints.hf_keys import (
        flava_config_to_transformers,
        flava_state_from_transformers,
    )
    from flava.model import FlavaModel, preset

    transformers.logging.set_verbosity_error()
    config = preset(preset_name)
    hf_config = transformers.FlavaConfig.from_dict(flava_config_to_transformers(config))
    torch.manual_seed(0)
    theirs = transformers.FlavaModel(hf_config)
    mapped, _, unplaced = flava_state_from_transformers(theirs.state_dict())
    if unplaced:
        raise RuntimeError(f"unmapped transformers keys: {unplaced[:5]}")
    ours = FlavaModel(config)
    ours.load_state_dict({k.removeprefix("flava."): v for k, v in mapped.items()}, strict=True)
    return ours.to(device).eval(), theirs.to(device).eval()


def inputs(config: object, batch: int, length: int, device: torch.device) -> dict:
    """Normalised pixels and padded token ids (lengths between 60% and 100% of `length`)."""
    g = torch.Generator().manual_seed(0)
    size = config.image.image_size  # type: ignore[attr-defined]
    length = min(length, config.text.max_position_embeddings)  # type: ignore[attr-defined]
    ids = torch.full((batch, length), PAD_ID, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for i in range(batch):
        n = (
            length
            if i == 0
            else int(torch.randint((3 * length) // 5, length + 1, (1,), generator=g))
        )
        ids[i, 1 : n - 1] = torch.randint(1000, 30000, (n - 2,), generator=g)
        ids[i, 0], ids[i, n - 1] = CLS_ID, SEP_ID
        mask[i, :n] = 1
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=g).to(device),
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
    }


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(
    fns: dict[tuple[str, str], Callable[[], torch.Tensor]],
    modality: str,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[dict[str, list[float]], float]:
    """(timed seconds per side, max |ours - theirs|) of one modality: a warm-up batch per side,
    then ABBA pairs of batches until --steps pairs or --max-seconds."""
    start = time.perf_counter()
    a, b = fns[(modality, "ours")](), fns[(modality, "transformers")]()
    diff = float((a.float() - b.float()).abs().max())
    log(f"  {modality}: warm-up batches {time.perf_counter() - start:.2f} s, max |diff| {diff:.2e}")
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    start = time.perf_counter()
    for step in range(args.steps):
        for side in SIDES if step % 2 == 0 else SIDES[::-1]:
            times[side].append(timed(fns[(modality, side)], device))
            log(f"  {modality} {side}: batch {step + 1}/{args.steps} {times[side][-1]:.3f} s")
        if time.perf_counter() - start >= args.max_seconds and step + 1 < args.steps:
            log(f"  {modality}: --max-seconds {args.max_seconds:g} reached after {step + 1} pairs")
            break
    return times, diff


def side_functions(
    ours: torch.nn.Module, theirs: torch.nn.Module, x: dict
) -> dict[tuple[str, str], Callable[[], torch.Tensor]]:
    """The four timed calls: (modality, side) -> projected CLS embeddings of the batch."""
    return {
        ("image", "ours"): lambda: ours.encode_image(x["pixel_values"]),
        ("image", "transformers"): lambda: theirs.get_image_features(
            pixel_values=x["pixel_values"]
        ).pooler_output[:, 0],
        ("text", "ours"): lambda: ours.encode_text(x["input_ids"], x["attention_mask"]),
        ("text", "transformers"): lambda: theirs.get_text_features(
            input_ids=x["input_ids"], attention_mask=x["attention_mask"]
        ).pooler_output[:, 0],
    }


def table(times: dict[str, dict[str, list[float]]], diffs: dict[str, float], batch: int) -> dict:
    """Print the result table; the summary per modality."""
    print(f"{'modality':<10}{'side':<14}{'median s/batch':>16}{'items/s':>10}{'max |diff|':>12}")
    summary: dict[str, dict] = {}
    for modality, per_side in times.items():
        row: dict[str, Any] = {}
        for side in SIDES:
            median = statistics.median(per_side[side])
            row[side] = {"median_s": median, "items_per_s": batch / median}
            print(
                f"{modality:<10}{side:<14}{median:>16.3f}{batch / median:>10.1f}"
                f"{diffs[modality]:>12.2e}"
            )
        row["speedup_ours_over_transformers"] = (
            row["ours"]["items_per_s"] / row["transformers"]["items_per_s"]
        )
        row["max_abs_diff"] = diffs[modality]
        print(f"{modality:<10}{'ours/theirs':<14}{row['speedup_ours_over_transformers']:>26.3f}x")
        summary[modality] = row
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Measure, print a table, optionally write JSON."""
    args = parse_args(argv)
    device = torch.device(args.device)
    machine = machine_info(device)
    log(describe(machine))
    log(
        f"embedding throughput: preset {args.preset}, batch {args.batch_size}, text length "
        f"{args.text_length}, precision {args.precision}, device {args.device}, "
        f"{args.steps} timed batches per side, at most {args.max_seconds:g} s per modality"
    )
    bf16 = args.precision == "bf16"
    note = slow_bf16_note(device, machine) if bf16 else None
    if note:
        log(note)
    peak = matmul_peak(device, torch.bfloat16 if bf16 else torch.float32, args.peak_seconds)
    log(f"building ours and transformers' {args.preset} (same weights)...")
    ours, theirs = build(args.preset, device)
    x = inputs(ours.config, args.batch_size, args.text_length, device)
    fns = side_functions(ours, theirs, x)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times: dict[str, dict[str, list[float]]] = {}
    diffs: dict[str, float] = {}
    with torch.inference_mode(), amp:
        for modality in ("image", "text"):
            times[modality], diffs[modality] = measure(fns, modality, args, device)
    print(f"\nmatmul peak ({peak['dtype']}): {peak['gflops']:.1f} GFLOP/s")
    summary = table(times, diffs, args.batch_size)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/inference.py", *(argv or sys.argv[1:])]),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
        "notes": [note] if note else [],
        "load_average": os.getloadavg(),
        "matmul_peak_gflops": peak["gflops"],
        "matmul_peak": peak,
        "times_s": {f"{m}/{s}": v for m, per_side in times.items() for s, v in per_side.items()},
        "summary": summary,
    }
    write_report(args.json, report)
    return report


if __name__ == "__main__":
    main()
