"""Image and text embedding throughput of ours vs transformers' FlavaModel on the same weights.

    python benchmarks/inference.py                       # flava_full, batch 64
    python benchmarks/inference.py --preset tiny --steps 5

Ours: `FlavaModel.encode_image` / `encode_text` (projected CLS). Theirs: `get_image_features` /
`get_text_features` (which project every position; we take the CLS row and check that it equals
ours). Both run in eval mode under `torch.inference_mode()` in one process, batches alternating
ours/theirs so that a shared machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import CLS_ID, PAD_ID, SEP_ID, matmul_peak, sync, write_report  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="flava_full")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed batches per side, after 1 warm-up")
    p.add_argument("--text-length", type=int, default=77, help="padded text length (default 77)")
    p.add_argument("--precision", choices=("32", "bf16"), default="32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
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


def main(argv: list[str] | None = None) -> dict:
    """Measure, print a table, optionally write JSON."""
    args = parse_args(argv)
    device = torch.device(args.device)
    ours, theirs = build(args.preset, device)
    x = inputs(ours.config, args.batch_size, args.text_length, device)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision == "bf16"
        else contextlib.nullcontext()
    )
    fns = {
        ("image", "ours"): lambda: ours.encode_image(x["pixel_values"]),
        ("image", "transformers"): lambda: theirs.get_image_features(
            pixel_values=x["pixel_values"]
        ).pooler_output[:, 0],
        ("text", "ours"): lambda: ours.encode_text(x["input_ids"], x["attention_mask"]),
        ("text", "transformers"): lambda: theirs.get_text_features(
            input_ids=x["input_ids"], attention_mask=x["attention_mask"]
        ).pooler_output[:, 0],
    }
    print(
        f"embedding throughput: preset {args.preset}, batch {args.batch_size}, text length "
        f"{args.text_length}, precision {args.precision}, device {args.device}, "
        f"{args.steps} timed batches per side, torch threads {torch.get_num_threads()}"
    )
    peak = matmul_peak(device, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
    diffs: dict[str, float] = {}
    with torch.inference_mode(), amp:
        for modality in ("image", "text"):
            a, b = fns[(modality, "ours")](), fns[(modality, "transformers")]()  # warm-up
            diffs[modality] = float((a.float() - b.float()).abs().max())
            for step in range(args.steps):
                order = ("ours", "transformers") if step % 2 == 0 else ("transformers", "ours")
                for side in order:
                    sync(device)
                    start = time.perf_counter()
                    fns[(modality, side)]()
                    sync(device)
                    times[(modality, side)].append(time.perf_counter() - start)
    summary: dict[str, dict] = {}
    print(f"\nmatmul peak ({args.precision}): {peak:.1f} GFLOP/s")
    print(f"{'modality':<10}{'side':<14}{'median s/batch':>16}{'items/s':>10}{'max |diff|':>12}")
    for modality in ("image", "text"):
        row = {}
        for side in ("ours", "transformers"):
            median = statistics.median(times[(modality, side)])
            row[side] = {"median_s": median, "items_per_s": args.batch_size / median}
            print(
                f"{modality:<10}{side:<14}{median:>16.3f}{args.batch_size / median:>10.1f}"
                f"{diffs[modality]:>12.2e}"
            )
        row["speedup_ours_over_transformers"] = (
            row["ours"]["items_per_s"] / row["transformers"]["items_per_s"]
        )
        row["max_abs_diff"] = diffs[modality]
        print(f"{modality:<10}{'ours/theirs':<14}{row['speedup_ours_over_transformers']:>26.3f}x")
        summary[modality] = row
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/inference.py", *(argv or sys.argv[1:])]),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average": os.getloadavg(),
        "matmul_peak_gflops": peak,
        "times_s": {f"{m}/{s}": v for (m, s), v in times.items()},
        "summary": summary,
    }
    write_report(args.json, report)
    return report


if __name__ == "__main__":
    main()
