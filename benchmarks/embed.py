"""flava.embed's encoder against transformers' FlavaModel: images/s and texts/s, same weights.

    python benchmarks/embed.py                                  # flava_full, fp32 and bf16
    python benchmarks/embed.py --preset tiny --images 32 --texts 256 --rounds 2

Ours: `flava.collection.Encoder`, as flava.embed runs it: `images(pixels)` on a batch of
transformed pictures, `texts(captions)` on a shard's captions (tokenised once, embedded longest
first in batches padded to their own longest caption), both L2-normalised, in the precision
asked for (bf16: the model's weights and activations in bf16). Theirs: `get_image_features` /
`get_text_features` of transformers' FlavaModel built from the same random weights (converted by
`flava.checkpoints.hf_keys`), CLS row, normalised, on the same pixels and on the captions in
record order, each batch padded to its own longest caption (what a user's loop with
`padding="longest"` gives), its weights in the same precision. A third text side, ours in record
order ("ours-unsorted"), separates the model's speed from the sorting's.

Per precision, ABBA rounds (ours, theirs, theirs, ours), `--rounds` of them; each pass embeds
`--images` pictures in batches of `--batch-size` and `--texts` captions in batches of 4x that.
The ratio ours / theirs is the median over rounds of each round's time ratio (both sides ran
twice in a round, so a load that drifts within a round cancels); items/s is the median pass.
The pictures and captions are generated scenes (flava.data.scenes): captions of 8 to 30 tokens.
Reported: items/s (median of the passes), ours/theirs, the cosine of bf16 to fp32 embeddings
(ours), which names the fastest precision within cosine 0.999 of fp32, and how far each side is
from the machine: the FLOP of a pass (counted once by torch's FlopCounterMode on ours; theirs
computes the same encoders) over its time, against the matrix-product peak of the precision
measured in the same run (`machine.matmul_peak`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference import build
from machine import describe, log, machine_info, matmul_peak, report_head, write_report

SIDES = ("ours", "transformers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="flava_full")
    p.add_argument("--images", type=int, default=32, help="pictures per pass (default 32)")
    p.add_argument("--texts", type=int, default=256, help="captions per pass (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch; texts: 4x")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds per precision (>= 2)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also profile one pass per side: time in matrix products and in the rest",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also ours compiled (embed.compile=true): side ours-compiled; warm-up = compiling",
    )
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def scenes(count: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """(transformed pixels [count, 3, S, S], one caption each) of generated scenes."""
    from flava.config import SourceConfig
    from flava.data.sources import build as build_source
    from flava.data.sources import decode_image
    from flava.data.transforms import image_transform

    source = build_source(SourceConfig(type="embedded", size=count), "train", image_size)
    transform = image_transform("eval", image_size=image_size)
    samples = [source.sample(i) for i in range(count)]
    pixels = torch.stack([transform(decode_image(s.image))["pixel_values"] for s in samples])
    return pixels, [s.texts[i % len(s.texts)] for i, s in enumerate(samples)]


def their_texts(theirs: Any, tokenizer: Any, captions: list[str], batch: int) -> torch.Tensor:
    """transformers' text embeddings in record order, each batch padded to its longest."""
    out = []
    for start in range(0, len(captions), batch):
        tok = tokenizer(captions[start : start + batch], max_length=77)
        emb = theirs.get_text_features(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        ).pooler_output[:, 0]
        out.append(F.normalize(emb.float(), dim=-1))
    return torch.cat(out)


def their_images(theirs: Any, pixels: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """transformers' image embeddings, in batches."""
    out = []
    for chunk in pixels.split(batch):
        emb = theirs.get_image_features(pixel_values=chunk.to(dtype)).pooler_output[:, 0]
        out.append(F.normalize(emb.float(), dim=-1))
    return torch.cat(out)


def sides(ours: Any, theirs: Any, precision: str, args: argparse.Namespace, data: tuple) -> dict:
    """(modality, side) -> a call embedding the pass's items."""
    from flava.collection import Encoder

    pixels, captions = data
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    encoder = Encoder(ours, "cpu", precision)
    theirs = theirs.to(dtype)
    b, tb = args.batch_size, 4 * args.batch_size

    def unsorted() -> torch.Tensor:
        """Ours on the captions in record order, batch by batch (no sorting across batches)."""
        chunks = [captions[i : i + tb] for i in range(0, len(captions), tb)]
        return torch.cat([encoder.texts(chunk, tb) for chunk in chunks])

    fns = {
        ("image", "ours"): lambda: torch.cat([encoder.images(c) for c in pixels.split(b)]),
        ("image", "transformers"): lambda: their_images(theirs, pixels, b, dtype),
        ("text", "ours"): lambda: encoder.texts(captions, tb),
        ("text", "transformers"): lambda: their_texts(theirs, encoder.tokenizer, captions, tb),
        ("text", "ours-unsorted"): unsorted,
    }
    if args.compile:
        compiled = Encoder(ours, "cpu", precision, compile=True)
        fns[("image", "ours-compiled")] = lambda: torch.cat(
            [compiled.images(c) for c in pixels.split(b)]
        )
        fns[("text", "ours-compiled")] = lambda: compiled.texts(captions, tb)
    return fns


def abba(
    fns: dict, modality: str, rounds: int
) -> tuple[dict[str, list[float]], dict, dict[str, float]]:
    """Seconds of each pass per side (ABBA rounds after one warm-up pass each); the outputs;
    the warm-up passes' seconds (a compiled side compiles in it)."""
    names = [s for (m, s) in fns if m == modality]
    outputs, warmup = {}, {}
    for side in names:
        start = time.perf_counter()
        outputs[side] = fns[(modality, side)]()
        warmup[side] = time.perf_counter() - start
    times: dict[str, list[float]] = {s: [] for s in names}
    for r in range(rounds):
        order = names + names[::-1]
        for side in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fns[(modality, side)]()
            times[side].append(time.perf_counter() - start)
            log(f"  {modality} {side}: {times[side][-1]:.2f} s")
    return times, outputs, warmup


def round_ratios(times: dict[str, list[float]], side: str) -> list[float]:
    """transformers' time over `side`'s in each ABBA round (each side ran twice a round, so a
    load that drifts linearly within a round cancels)."""
    theirs, mine = times["transformers"], times[side]
    return [
        (theirs[i] + theirs[i + 1]) / (mine[i] + mine[i + 1]) for i in range(0, len(mine) - 1, 2)
    ]


PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product")
"""Operators counted as matrix products (attention's fused kernels included) in `breakdown`."""


def breakdown(fns: dict, modality: str) -> dict[str, dict[str, float]]:
    """Per side: seconds of one profiled pass in matrix products and in everything else (the
    operators' own CPU time, torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for (m, side), fn in fns.items():
        if m != modality:
            continue
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        split = {"products_s": 0.0, "other_s": 0.0}
        for event in prof.key_averages():
            where = "products_s" if event.key.startswith(PRODUCTS) else "other_s"
            split[where] += event.self_cpu_time_total / 1e6
        out[side] = split
        products, rest = split["products_s"], split["other_s"]
        log(f"  {modality} {side}: products {products:.2f} s, the rest {rest:.2f} s")
    return out


def pass_flop(fns: dict, modality: str) -> float:
    """FLOP of one pass of ours (matrix products and attention, as FlopCounterMode counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fns[(modality, "ours")]()
    return float(counter.get_total_flops())


def measure(ours: Any, theirs: Any, args: argparse.Namespace, data: tuple) -> dict:
    """Per precision and modality: items/s per side, ours/theirs, ours' embeddings, GFLOP/s
    per side against the precision's matmul peak."""
    counts = {"image": len(data[0]), "text": len(data[1])}
    found: dict[str, Any] = {}
    with torch.inference_mode():
        # fp32 first: each Encoder casts the (shared) weights to its precision in place
        for precision in sorted(args.precisions.split(","), key=lambda p: p != "fp32"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            peak = matmul_peak(torch.device("cpu"), dtype, 6.0)["gflops"]
            fns = sides(ours, theirs, precision, args, data)
            for modality in ("image", "text"):
                flop = pass_flop(fns, modality)
                log(f"{precision} {modality}:")
                times, outputs, warmup = abba(fns, modality, args.rounds)
                rate = {s: counts[modality] / statistics.median(t) for s, t in times.items()}
                ratios = {s: round_ratios(times, s) for s in times}
                gap = float((outputs["ours"] - outputs["transformers"]).abs().max())
                seconds = {s: statistics.median(t) for s, t in times.items()}
                split = breakdown(fns, modality) if args.breakdown else {}
                found[f"{precision}/{modality}"] = {
                    "items_per_s": rate,
                    "gflop_per_pass": flop / 1e9,
                    "matmul_peak_gflops": peak,
                    "share_of_peak": {s: flop / t / 1e9 / peak for s, t in seconds.items()},
                    "breakdown": split,
                    "ours_over_transformers": statistics.median(ratios["ours"]),
                    "round_ratios": ratios,
                    "times_s": times,
                    "max_abs_diff_to_transformers": gap,
                    "warmup_s": warmup,
                    "embeddings": outputs["ours"],
                }
                if "ours-compiled" in outputs:
                    cos = F.cosine_similarity(outputs["ours-compiled"], outputs["ours"], dim=-1)
                    found[f"{precision}/{modality}"]["compiled_cosine_to_ours"] = float(cos.min())
                    found[f"{precision}/{modality}"]["compiled"] = outputs["ours-compiled"]
    return found


def print_table(found: dict) -> None:
    """The result table, and the cosine of bf16 to fp32 embeddings."""
    head = f"{'precision/modality':<20}{'side':<16}{'items/s':>10}{'x theirs':>10}"
    print(f"\n{head}{'(rounds)':>24}{'of peak':>10}")
    for key, row in found.items():
        for side, rate in row["items_per_s"].items():
            ratios = row["round_ratios"][side]
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            share = row["share_of_peak"][side]
            ratio = statistics.median(ratios)
            print(f"{key:<20}{side:<16}{rate:>10.2f}{ratio:>9.3f}x{spread:>24}{share:>10.1%}")
    for modality in ("image", "text"):
        if f"bf16/{modality}" in found and f"fp32/{modality}" in found:
            a, b = found[f"bf16/{modality}"]["embeddings"], found[f"fp32/{modality}"]["embeddings"]
            cos = F.cosine_similarity(a, b, dim=-1)
            found[f"bf16/{modality}"]["cosine_to_fp32"] = {
                "min": float(cos.min()),
                "mean": float(cos.mean()),
            }
            print(f"bf16 vs fp32 {modality}: cosine min {cos.min():.5f}, mean {cos.mean():.5f}")
            if "compiled" in found[f"bf16/{modality}"]:
                cos = F.cosine_similarity(found[f"bf16/{modality}"]["compiled"], b, dim=-1)
                found[f"bf16/{modality}"]["compiled_cosine_to_fp32"] = float(cos.min())
                print(f"bf16 compiled vs fp32 {modality}: cosine min {cos.min():.5f}")
    for key, row in found.items():
        if "warmup_s" in row and "ours-compiled" in row["warmup_s"]:
            w = row["warmup_s"]
            first = f"{w['ours-compiled']:.1f} s, eager {w['ours']:.1f} s"
            print(f"{key}: first pass of ours-compiled (compiling) {first}")


def main(argv: list[str] | None = None) -> dict:
    """Measure, print, optionally write JSON."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    machine = machine_info(torch.device("cpu"))
    log(describe(machine))
    ours, theirs = build(args.preset, torch.device("cpu"))
    data = scenes(max(args.images, args.texts), ours.config.image.image_size)
    data = (data[0][: args.images], data[1][: args.texts])
    lengths = [len(ids) for ids in _token_lengths(data[1])]
    log(f"captions: {min(lengths)}-{max(lengths)} tokens, mean {statistics.mean(lengths):.1f}")
    found = measure(ours, theirs, args, data)
    print_table(found)
    report = report_head("embed.py", argv or sys.argv[1:], args, machine)
    report["results"] = {
        k: {f: v for f, v in row.items() if f not in ("embeddings", "compiled")}
        for k, row in found.items()
    }
    write_report(args.json, report)
    return report


def _token_lengths(captions: list[str]) -> list[list[int]]:
    """Each caption's token ids ([CLS] and [SEP] included, up to 77)."""
    from flava.data.tokenizer import load_tokenizer

    mask = load_tokenizer()(captions, max_length=77)["attention_mask"]
    return [row[: int(row.sum())].tolist() for row in mask]


if __name__ == "__main__":
    main()
