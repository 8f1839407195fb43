"""Time FLAVA's full pretraining step (forward, backward, AdamW) against transformers'.

    python benchmarks/train_step.py --preset flava_full --batch-size 8 --steps 3
    python benchmarks/train_step.py --preset tiny --steps 5 --precision bf16-mixed --json out.json
    python benchmarks/train_step.py --preset tiny --steps 3 --sides ours,ours-compiled
    python benchmarks/train_step.py --preset tiny --steps 3 --sides ours,ours-compiled-step

Both sides get the same weights (transformers' FlavaForPreTraining randomly initialised from
the preset's transformers config, converted into ours with the checkpoint mapping), the same
image-text pair batch (75/196-scaled masked patches, 15% masked tokens, all ITM labels
positive) and the same objectives: global contrastive on the unmasked pair, ITM, MMM-image and
MMM-text on the masked pair, MIM targets from a forward pass of the DALL-E codebook on both
sides. Each (side, round) runs in its own subprocess so that its peak memory is its own; rounds
alternate ours/theirs (ABBA...) in one invocation so that a shared machine's load hits both.

Sides (--sides): `ours`, `transformers`, `torchmultimodal`, `ours-compiled`: our model
exactly as `ours` but compiled the way training compiles it (`training.compile`:
flava.training.sharding.compile_layers, every transformer layer `Module.compile()`d in place), so
`--sides ours,ours-compiled` times eager against compiled in one invocation and reports the
ratio ours-compiled / ours; and `ours-compiled-step`: the whole loss function (codebook targets,
the three encoders, the heads and the losses; their backward through AOTAutograd) given to one
`torch.compile`, to see whether compiling more than the layers pays on a machine. Compiled
sides report how many graphs dynamo made and where it broke them. --compile compiles the other
sides too: `ours` through the same compile_layers, transformers' three encoders whole (with
--compile, `ours-compiled` is the same as `ours`). The step's FLOPs are counted once for ours
(eager) and reused for the compiled sides. On CPU, whenever anything is compiled (--compile, or
a compiled side), every worker runs with
OMP_WAIT_POLICY=PASSIVE, eager sides included, so that all sides share one OpenMP setting.

The matrix-product peak of the run's precision (fp32 or bf16, not both) is measured at the start
and the end of the same invocation and FLOPs are counted with FlopCounterMode (codebook forward
included) to give model-FLOPs utilisation.

Nothing waits unbounded: each peak measurement stops after --peak-seconds, each run stops timing
steps once --max-seconds have passed (the clock is read after every step; at least one timed
step), and a worker subprocess still running after --worker-timeout is killed and reported as
failed. The report starts with the CPU (model, torch's CPU capability, native bf16 or not).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
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
    report_head,
    rss_now,
    rss_peak,
    slow_bf16_note,
    sync,
    write_report,
)

SIDES = ("ours", "ours-compiled", "ours-compiled-step", "transformers", "torchmultimodal")
COMPILED = ("ours-compiled", "ours-compiled-step")
# sides that do the FLOPs of another: counted once
FLOP_SIDE = {"ours-compiled": "ours", "ours-compiled-step": "ours"}
# (numerator, denominator) of the ratio lines; the compiled ones against transformers only
# where --compile compiles transformers too
RATIOS = (
    ("ours", "transformers"),
    ("ours-compiled", "ours"),
    ("ours-compiled-step", "ours"),
    ("ours-compiled", "transformers"),
    ("ours-compiled-step", "transformers"),
)
MASK_ID, CLS_ID, SEP_ID, PAD_ID = 103, 101, 102, 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the `--_*` ones are internal to the worker subprocesses)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="flava_full", help="model preset (default flava_full)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    p.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed steps per run, after the warm-up steps (fewer once --max-seconds have passed)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="untimed steps before the timed ones (default 2: the first allocates the optimizer "
        "state and compiles, the second still maps fresh memory in; each step's minor page "
        "faults are logged, so you can see when the steps reach a steady state)",
    )
    p.add_argument("--rounds", type=int, default=1, help="runs per side, alternating ABBA")
    p.add_argument("--text-length", type=int, default=40, help="padded text length (default 40)")
    p.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")
    p.add_argument("--activation-checkpointing", action="store_true", help="on both sides")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every side: ours layer by layer as training does (compile_layers), "
        "transformers' encoders whole (the ours-compiled side is compiled either way)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--optimizer",
        choices=("fused", "foreach", "for-loop"),
        default="fused",
        help="AdamW implementation on both sides (default fused)",
    )
    p.add_argument(
        "--sides",
        default="ours,transformers,torchmultimodal",
        help="comma-separated sides among " + ", ".join(SIDES) + " (ours-compiled: ours with "
        "every transformer layer compiled, as training.compile does); torchmultimodal is "
        "skipped unless importable",
    )
    p.add_argument(
        "--experiment",
        default="",
        help="candidate speed changes applied to ours only, comma-separated: always-mask (no "
        "host sync on the padding mask), codebook-channels-last",
    )
    p.add_argument("--no-flops", action="store_true", help="skip the FlopCounterMode pass")
    p.add_argument(
        "--host-memory",
        choices=("reuse", "return", "system"),
        default="reuse",
        help="glibc malloc policy of every worker, all sides alike (flava.training.host_memory; "
        "default reuse, what flava training does on CPU; system: glibc's default)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the timed steps, profile one more step of each run (torch.profiler) and "
        "print its top operators by self time",
    )
    p.add_argument("--profile-rows", type=int, default=15, help="operators listed (default 15)")
    add_time_limits(p)
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="keep the prepared weights, batch and FLOP counts here and reuse them in later "
        "invocations with the same preset, batch size, text length and device",
    )
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    p.add_argument("--_role", choices=("prepare", "run"), help=argparse.SUPPRESS)
    p.add_argument("--_side", help=argparse.SUPPRESS)
    p.add_argument("--_workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def add_time_limits(p: argparse.ArgumentParser) -> None:
    """The options that bound every measurement in wall time."""
    p.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        help="per run: no further timed step starts after this many seconds of timed steps "
        "(default 300; at least one timed step)",
    )
    p.add_argument(
        "--peak-seconds",
        type=float,
        default=4.0,
        help="wall-time budget of each matmul-peak measurement (default 4)",
    )
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=1800.0,
        help="kill a worker subprocess (prepare, or one run) after this many seconds and report "
        "it as failed (default 1800; 0: no limit)",
    )


# ----------------------------------------------------------------------------- measurements


# ----------------------------------------------------------------------------- inputs


def make_batch(config: Any, batch_size: int, text_length: int, seed: int = 0) -> dict:
    """A deterministic image-text pair batch shaped like the pretraining pipeline's output."""
    from flava.objectives.masking import mask_tokens

    g = torch.Generator().manual_seed(seed)
    image = config.image
    grid = image.grid_size
    n_patches = grid * grid
    n_masked = round(75 * n_patches / 196)
    masked_pos = torch.zeros(batch_size, n_patches, dtype=torch.bool)
    for row in masked_pos:
        row[torch.randperm(n_patches, generator=g)[:n_masked]] = True
    length = min(text_length, config.text.max_position_embeddings)
    ids = torch.full((batch_size, length), PAD_ID, dtype=torch.long)
    attention = torch.zeros(batch_size, length, dtype=torch.long)
    low = max(4, (3 * length) // 5)
    for i in range(batch_size):
        n = length if i == 0 else int(torch.randint(low, length + 1, (1,), generator=g))
        ids[i, 1 : n - 1] = torch.randint(1000, config.text.vocab_size, (n - 2,), generator=g)
        ids[i, 0], ids[i, n - 1] = CLS_ID, SEP_ID
        attention[i, :n] = 1
    special = (ids == CLS_ID) | (ids == SEP_ID) | (ids == PAD_ID)
    masked_ids, mlm_labels = mask_tokens(
        ids, special, MASK_ID, config.text.vocab_size, probability=0.15, generator=g
    )
    side = grid * 8  # the DALL-E codebook sees 8 px per patch
    return {
        "pixel_values": torch.randn(batch_size, 3, image.image_size, image.image_size, generator=g),
        "codebook_pixel_values": torch.rand(batch_size, 3, side, side, generator=g),
        "bool_masked_pos": masked_pos,
        "input_ids": ids,
        "attention_mask": attention,
        "input_ids_masked": masked_ids,
        "mlm_labels": mlm_labels,
        "itm_labels": torch.ones(batch_size, dtype=torch.long),
    }


def transformers_config(preset_name: str) -> Any:
    """transformers' FlavaConfig for one of our presets (through the checkpoint mapping)."""
    import transformers

    from flava.checkpoints.hf_keys import flava_config_to_transformers
    from flava.model import preset

    return transformers.FlavaConfig.from_dict(flava_config_to_transformers(preset(preset_name)))


# ----------------------------------------------------------------------------- the two sides


Built = tuple[torch.nn.Module, Callable[[dict], torch.Tensor]]


def build_side(side: str, args: argparse.Namespace, workdir: Path, device: torch.device) -> Built:
    """(model in train mode on `device`, loss function of a batch) for one side."""
    builders = {"ours": build_ours, "transformers": build_transformers}
    if side == "torchmultimodal":
        return build_torchmultimodal(args, device)
    if side == "ours-compiled":
        return build_ours(argparse.Namespace(**{**vars(args), "compile": True}), workdir, device)
    if side == "ours-compiled-step":
        model, loss = build_ours(
            argparse.Namespace(**{**vars(args), "compile": False}), workdir, device
        )
        return model, torch.compile(loss)
    if side not in builders:
        raise ValueError(f"unknown side {side!r}")
    return builders[side](args, workdir, device)


def build_ours(args: argparse.Namespace, workdir: Path, device: torch.device) -> Built:
    """Our FlavaForPreTraining on the shared weights, with --experiment candidates applied;
    with `args.compile` every transformer layer compiled in place, as training.compile does."""
    from flava.model import FlavaForPreTraining, preset
    from flava.objectives.pretraining import LossWeights, pretraining_step
    from flava.training.sharding import compile_layers

    config = preset(args.preset)
    if args.activation_checkpointing:
        config = config.with_activation_checkpointing(True)
    model = FlavaForPreTraining(config)
    model.load_state_dict(torch.load(workdir / "ours.pt", weights_only=True), strict=True)
    model.to(device).train()
    if args.compile:
        compile_layers(model)
    weights = LossWeights()
    experiments = set(filter(None, args.experiment.split(",")))
    if "always-mask" in experiments:  # candidate: no host sync on the padding mask
        import flava.model.encoders as encoders

        encoders.padding_mask = lambda m: None if m is None else m.bool()[:, None, None, :]
    channels_last = "codebook-channels-last" in experiments
    if channels_last:  # candidate: NHWC convolutions in the frozen codebook
        model.codebook.to(memory_format=torch.channels_last)

    def ours_loss(batch: dict) -> torch.Tensor:
        def targets(b: dict) -> torch.Tensor:
            pixels = b["codebook_pixel_values"]
            if channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            return model.codebook.get_codebook_indices(pixels)

        out = pretraining_step(model, batch, "vl", targets, weights, 0.0)
        return out["loss"]

    return model, ours_loss


def build_transformers(args: argparse.Namespace, workdir: Path, device: torch.device) -> Built:
    """transformers' FlavaForPreTraining on the shared weights."""
    import transformers

    transformers.logging.set_verbosity_error()
    hf = transformers.FlavaForPreTraining(transformers_config(args.preset))
    missing, unexpected = hf.load_state_dict(
        torch.load(workdir / "transformers.pt", weights_only=True), strict=False
    )
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise RuntimeError(f"weights do not fit: {missing[:4]} {unexpected[:4]}")
    hf.to(device).train()
    if args.activation_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.compile:
        for enc in (hf.flava.image_model, hf.flava.text_model, hf.flava.multimodal_model):
            enc.compile()
    eps = 0.1  # DALL-E's map_pixels: transformers expects already mapped codebook pixels

    def hf_loss(batch: dict) -> torch.Tensor:
        return hf(
            input_ids=batch["input_ids"],
            input_ids_masked=batch["input_ids_masked"],
            pixel_values=batch["pixel_values"],
            codebook_pixel_values=(1 - 2 * eps) * batch["codebook_pixel_values"] + eps,
            attention_mask=batch["attention_mask"],
            bool_masked_pos=batch["bool_masked_pos"],
            mlm_labels=batch["mlm_labels"].clone(),
            itm_labels=batch["itm_labels"],
            return_loss=True,
        ).loss

    return hf, hf_loss


def build_torchmultimodal(args: argparse.Namespace, device: torch.device) -> Built:
    """Best effort: TorchMultimodal's FLAVA with its own random weights (no weight mapping)."""
    from torchmultimodal.models.flava.model import flava_model_for_pretraining

    if args.preset != "flava_full":
        raise RuntimeError("TorchMultimodal builds only the flava_full shape")
    tmm = flava_model_for_pretraining().to(device).train()

    def tmm_loss(batch: dict) -> torch.Tensor:
        out = tmm(
            image=batch["pixel_values"],
            text=batch["input_ids"],
            image_for_codebook=batch["codebook_pixel_values"],
            image_patches_mask=batch["bool_masked_pos"],
            text_masked=batch["input_ids_masked"],
            itm_labels=batch["itm_labels"],
            mlm_labels=batch["mlm_labels"],
        )
        losses = [v for v in vars(out.losses).values() if isinstance(v, torch.Tensor)]
        return sum(losses)

    return tmm, tmm_loss


def make_optimizer(model: torch.nn.Module, kind: str) -> torch.optim.Optimizer:
    """AdamW (paper settings) over the trainable parameters, implementation `kind`."""
    params = [p for p in model.parameters() if p.requires_grad]
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1, **flags[kind])


def autocast(args: argparse.Namespace, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for --precision bf16-mixed, otherwise nothing."""
    if args.precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_flops(loss_fn: Callable[[dict], torch.Tensor], batch: dict) -> int:
    """FLOPs of one forward + backward (codebook forward included) by FlopCounterMode."""
    from flava.planning import flop_counter  # FlopCounterMode + PyTorch's CPU flash attention

    with flop_counter() as counter:
        loss_fn(batch).backward()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- worker roles


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Shared weights and batch on disk, plus FLOPs per step of ours and transformers (fp32,
    eager, no recompute; ours-compiled does ours' FLOPs)."""
    import transformers

    from flava.checkpoints.dalle import codebook_state_from_transformers
    from flava.checkpoints.hf_keys import flava_state_from_transformers
    from flava.model import preset

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    log(f"  prepare: building transformers' {args.preset} and converting its weights")
    hf = transformers.FlavaForPreTraining(transformers_config(args.preset))
    hf_state = hf.state_dict()
    torch.save(hf_state, workdir / "transformers.pt")
    mapped, hf_codebook, unplaced = flava_state_from_transformers(hf_state)
    codebook, more = codebook_state_from_transformers(hf_codebook)
    if unplaced or more:
        raise RuntimeError(f"unmapped transformers keys: {(unplaced + more)[:5]}")
    mapped.update({f"codebook.{k}": v for k, v in codebook.items()})
    torch.save(mapped, workdir / "ours.pt")
    config = preset(args.preset)
    batch = make_batch(config, args.batch_size, args.text_length)
    torch.save(batch, workdir / "batch.pt")
    info: dict[str, Any] = {
        "parameters": sum(p.numel() for p in hf.parameters() if p.requires_grad),
        "codebook_parameters": sum(p.numel() for p in hf.image_codebook.parameters()),
        "masked_patches_per_image": int(batch["bool_masked_pos"][0].sum()),
        "patches_per_image": int(batch["bool_masked_pos"].shape[1]),
        "masked_tokens": int((batch["mlm_labels"] != -100).sum()),
        "text_tokens": int(batch["attention_mask"].sum()),
    }
    if args.no_flops:
        return info
    del hf, hf_state
    from flava.planning import Workload, flop_counter, step_flops

    flops: dict[str, int] = {}
    device = torch.device(args.device)
    batch = {k: v.to(device) for k, v in batch.items()}
    for side in ("ours", "transformers"):
        plain = argparse.Namespace(**{**vars(args), "activation_checkpointing": False})
        plain.compile, plain.experiment = False, ""
        model, loss_fn = build_side(side, plain, workdir, device)
        log(f"  prepare: counting the FLOPs of one {side} step (one fp32 forward + backward)")
        flops[side] = count_flops(loss_fn, batch)
        if side == "ours":
            with flop_counter() as counter:
                model.codebook.get_codebook_indices(batch["codebook_pixel_values"])
            info["codebook_flops"] = int(counter.get_total_flops())
        del model, loss_fn
    info["flops"] = flops
    workload = Workload(args.batch_size, batch["input_ids"].shape[1])
    info["analytic_flops_unpadded"] = step_flops(config, workload)["total"]
    return info


def minor_faults() -> int:
    """Minor page faults of this process so far (memory the kernel mapped in on first touch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_steps(
    args: argparse.Namespace, device: torch.device, step: Callable[[], float], side: str
) -> dict[str, Any]:
    """Warm-up and timed steps: --warmup-steps untimed steps (allocations, optimizer state,
    compilation), then up to --steps timed ones, no further step once --max-seconds of timed
    steps have passed (at least one). Seconds, minor page faults and loss of every step."""
    out: dict[str, Any] = {"warmup_s": [], "warmup_faults": [], "step_times_s": [], "faults": []}
    losses: list[float] = []
    warmups = max(args.warmup_steps, 0)
    for i in range(warmups + args.steps):
        sync(device)
        faults, start = minor_faults(), time.perf_counter()
        losses.append(step())
        sync(device)
        elapsed, faults = time.perf_counter() - start, minor_faults() - faults
        if i < warmups:
            out["warmup_s"].append(elapsed)
            out["warmup_faults"].append(faults)
            log(
                f"    {side}: warm-up step {i + 1}/{warmups} {elapsed:.2f} s, "
                f"{faults} page faults, loss {losses[-1]:.4f}"
            )
            continue
        out["step_times_s"].append(elapsed)
        out["faults"].append(faults)
        n = len(out["step_times_s"])
        log(f"    {side}: step {n}/{args.steps} {elapsed:.2f} s, {faults} page faults")
        if sum(out["step_times_s"]) >= args.max_seconds and n < args.steps:
            log(f"    {side}: --max-seconds {args.max_seconds:g} reached after {n} timed steps")
            break
    out["losses"] = losses
    return out


def compile_counts() -> dict[str, Any]:
    """Graphs dynamo made in this process and its graph breaks by reason (first line)."""
    from torch._dynamo.utils import counters

    reasons: dict[str, int] = {}
    for reason, n in counters["graph_break"].items():
        first = reason.splitlines()[0][:100]
        reasons[first] = reasons.get(first, 0) + n
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": reasons}


def run(args: argparse.Namespace, side: str, workdir: Path) -> dict[str, Any]:
    """Warm-up + timed steps of one side; step times, losses and peak memory."""
    from flava.training import host_memory

    device = torch.device(args.device)
    host_memory.apply(args.host_memory)
    torch.manual_seed(0)
    batch = {
        k: v.to(device) for k, v in torch.load(workdir / "batch.pt", weights_only=True).items()
    }
    model, loss_fn = build_side(side, args, workdir, device)
    optimizer = make_optimizer(model, args.optimizer)
    ready_rss = rss_now()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        with autocast(args, device):
            loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    steps = timed_steps(args, device, step, side)
    profile = profile_step(step, args.profile_rows) if args.profile else None
    out = {
        "side": side,
        **steps,
        "median_step_s": statistics.median(steps["step_times_s"]),
        "steps_cut_by_max_seconds": len(steps["step_times_s"]) < args.steps,
        "ready_rss_bytes": ready_rss,
        "peak_rss_bytes": rss_peak(),
    }
    if side in COMPILED or args.compile:
        out["compiled"] = compile_counts()
    if profile is not None:
        out["profile"] = profile
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        out["device_name"] = torch.cuda.get_device_name(device)
    return out


def profile_step(step: Callable[[], float], rows: int) -> dict[str, Any]:
    """One step under torch.profiler: total self time and the top `rows` operators by it."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0 or _device_time(e) > 0]
    cuda = ProfilerActivity.CUDA in activities
    key = _device_time if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(key(e) for e in events)
    top = sorted(events, key=key, reverse=True)[:rows]
    return {
        "clock": "device" if cuda else "cpu",
        "total_self_us": total,
        "ops": [{"name": e.key, "self_us": key(e), "calls": e.count} for e in top],
    }


def _device_time(event: Any) -> float:
    """An operator's self time on the accelerator (0 where it has none)."""
    return float(getattr(event, "self_device_time_total", 0) or 0)


def print_profiles(results: list[dict]) -> None:
    """The top operators of each profiled run, as a share of its profiled step's self time."""
    for r in results:
        prof = r.get("profile")
        if not prof:
            continue
        total = prof["total_self_us"] or 1
        print(
            f"\nprofile of one step, run {r['run']} {r['side']} "
            f"({prof['clock']} self time {total / 1e6:.2f} s):"
        )
        print(f"{'operator':<44}{'self s':>9}{'share':>8}{'calls':>8}")
        for op in prof["ops"]:
            share = op["self_us"] / total
            print(f"{op['name'][:43]:<44}{op['self_us'] / 1e6:>9.3f}{share:>8.1%}{op['calls']:>8}")


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment of the worker subprocesses.

    Compiled CPU kernels use OpenMP; on a loaded machine its spinning threads starved the run
    (tiny preset: 15 s per compiled step instead of 0.28 s), so on CPU, when anything is
    compiled (--compile, or the ours-compiled side among --sides), the OpenMP threads sleep
    when idle in every worker (all sides alike, eager ones included, so that eager and compiled
    are timed under the same OpenMP setting).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    compiled = args.compile or any(s in COMPILED for s in requested_sides(args))
    if compiled and args.device == "cpu":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def spawn(raw: list[str], role: str, side: str, workdir: Path, out: Path, env: dict) -> dict:
    """Run one worker subprocess with the same options `raw` and read back its JSON.

    Its progress lines go straight to our stdout; its stderr is kept for the error message. It
    runs in its own process group, killed whole after --worker-timeout seconds.
    """
    argv = [sys.executable, __file__, *raw, "--_role", role, "--_side", side]
    argv += ["--_workdir", str(workdir), "--_out", str(out)]
    limit = parse_args(raw).worker_timeout or None
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(
        argv, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"side": side, "error": f"worker killed after --worker-timeout {limit:g} s"}
    if proc.returncode:
        code = proc.returncode
        why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        if code == -9:
            why += " (out of memory?)"
        tail = stderr.strip().splitlines()[-12:]
        return {"side": side, "error": "\n".join([*tail, f"worker {why}"])}
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- report


def side_order(sides: list[str], rounds: int) -> list[str]:
    """ABBA alternation: ours, theirs, theirs, ours, ... for `rounds` runs per side."""
    order: list[str] = []
    for r in range(rounds):
        order += sides if r % 2 == 0 else sides[::-1]
    return order


def gib(n: float | None) -> str:
    """Bytes as GiB with two decimals ('-' when missing)."""
    return "-" if n is None else f"{n / 2**30:.2f}"


def peak_dtype(args: argparse.Namespace) -> tuple[str, torch.dtype]:
    """The matrix-product dtype whose peak the MFU of this run is against."""
    return ("bf16", torch.bfloat16) if args.precision == "bf16-mixed" else ("fp32", torch.float32)


def ratio_key(num: str, den: str) -> str:
    """The summary's key of the ratio num / den ('ratio_ours_compiled_over_ours')."""
    return f"ratio_{num}_over_{den}".replace("-", "_")


def summarise(results: list[dict], info: dict, peak: float, args: argparse.Namespace) -> dict:
    """Aggregate rounds per side: median step time, worst peak memory, MFU, ratios.

    MFU of every side is against ours' FLOPs (the same work done); a side's `step_flops` is its
    own count (ours-compiled: ours' count)."""
    model_flops = info.get("flops", {}).get("ours")
    sides: dict[str, dict] = {}
    for r in results:
        if "error" in r:
            sides.setdefault(r["side"], {"error": r["error"]})
            continue
        s = sides.setdefault(r["side"], {"times": [], "peak_rss": [], "cuda_peak": [], "loss": []})
        s["times"] += r["step_times_s"]
        s["peak_rss"].append(r["peak_rss_bytes"])
        s["cuda_peak"].append(r.get("cuda_peak_bytes"))
        s["loss"].append(r["losses"][0])
    summary: dict[str, dict] = {}
    for name, s in sides.items():
        if "error" in s:
            summary[name] = {"error": s["error"]}
            continue
        median = statistics.median(s["times"])
        flops = info.get("flops", {}).get(FLOP_SIDE.get(name, name)) or model_flops
        row = {
            "median_step_s": median,
            "samples_per_s": args.batch_size / median,
            "peak_rss_bytes": max(s["peak_rss"]),
            "first_loss": s["loss"][0],
            "step_flops": flops,
        }
        if s["cuda_peak"][0] is not None:
            row["cuda_peak_bytes"] = max(s["cuda_peak"])
        if model_flops:
            row["achieved_gflops"] = model_flops / median / 1e9
            row["mfu"] = model_flops / median / 1e9 / peak
        summary[name] = row
    for num, den in RATIOS:
        if num in COMPILED and den == "transformers" and not args.compile:
            continue  # compiled against eager transformers: not like for like
        a, b = summary.get(num, {}), summary.get(den, {})
        if "median_step_s" not in a or "median_step_s" not in b:
            continue
        ratio = {
            "step_time": a["median_step_s"] / b["median_step_s"],
            "peak_rss": a["peak_rss_bytes"] / b["peak_rss_bytes"],
        }
        if "cuda_peak_bytes" in a and "cuda_peak_bytes" in b:
            ratio["cuda_peak"] = a["cuda_peak_bytes"] / b["cuda_peak_bytes"]
        summary[ratio_key(num, den)] = ratio
    return summary


def print_table(summary: dict, info: dict, peak: float, args: argparse.Namespace) -> None:
    """Human-readable result table."""
    print(
        f"\nmatmul peak ({peak_dtype(args)[0]}, best of start and end): {peak:.1f} GFLOP/s "
        "(MFU below is against it)"
    )
    if "flops" in info:
        f = info["flops"]
        print(
            f"FLOPs per step (FlopCounterMode, fwd+bwd, codebook fwd included): ours "
            f"{f['ours'] / 1e12:.3f} TFLOP, transformers {f['transformers'] / 1e12:.3f} TFLOP; "
            f"codebook forward {info['codebook_flops'] / 1e12:.3f} TFLOP; flava.plan's analytic "
            f"count {info['analytic_flops_unpadded'] / 1e12:.3f} TFLOP (no padding, 15% masking)"
        )
    cuda = any("cuda_peak_bytes" in v for v in summary.values() if isinstance(v, dict))
    head = f"{'side':<19}{'step s (median)':>16}{'samples/s':>11}{'peak RSS GiB':>14}"
    head += f"{'GPU peak GiB':>14}" if cuda else ""
    head += f"{'GFLOP/s':>10}{'MFU':>8}{'loss@0':>10}"
    print(head)
    print("-" * len(head))
    for name in SIDES:
        row = summary.get(name)
        if row is None:
            continue
        if "error" in row:
            print(f"{name:<19}skipped: {row['error'].splitlines()[-1]}")
            continue
        line = f"{name:<19}{row['median_step_s']:>16.3f}{row['samples_per_s']:>11.2f}"
        line += f"{gib(row['peak_rss_bytes']):>14}"
        line += f"{gib(row.get('cuda_peak_bytes')):>14}" if cuda else ""
        if "mfu" in row:
            line += f"{row['achieved_gflops']:>10.1f}{row['mfu']:>8.1%}"
        else:
            line += f"{'-':>10}{'-':>8}"
        line += f"{row['first_loss']:>10.4f}"
        print(line)
    for num, den in RATIOS:
        ratio = summary.get(ratio_key(num, den))
        if ratio:
            text = ", ".join(f"{k} {v:.3f}x" for k, v in ratio.items())
            print(f"{num} / {den}: {text}")


def requested_sides(args: argparse.Namespace) -> list[str]:
    """The --sides, in order; an unknown name stops the run."""
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        raise SystemExit(f"--sides: unknown {', '.join(unknown)} (known: {', '.join(SIDES)})")
    return sides


def available_sides(args: argparse.Namespace, notes: list[str]) -> list[str]:
    """The --sides that can run here (TorchMultimodal only where it imports)."""
    sides = requested_sides(args)
    if args.compile and "ours" in sides and "ours-compiled" in sides:
        notes.append("--compile compiles ours as well: ours and ours-compiled are the same")
    if "torchmultimodal" in sides:
        try:
            import torchmultimodal  # noqa: F401
        except ImportError:
            sides.remove("torchmultimodal")
            notes.append("TorchMultimodal is not importable here: skipped")
    return sides


def get_info(raw: list[str], args: argparse.Namespace, workdir: Path, env: dict) -> dict:
    """Prepared weights, batch and FLOP counts: from the cache, or from a prepare worker."""
    cached = workdir / "prepare.json"
    if args.cache_dir and cached.exists():
        info = json.loads(cached.read_text())
        if args.no_flops or "flops" in info:
            log(f"reusing prepared weights, batch and FLOP counts in {workdir}")
            return info
    log("preparing weights, batch and FLOP counts (worker subprocess)...")
    start = time.perf_counter()
    info = spawn(raw, "prepare", "-", workdir, cached, env)
    if "error" in info:
        raise SystemExit(f"preparing weights failed:\n{info['error']}")
    log(f"prepared weights, batch and FLOP counts in {time.perf_counter() - start:.0f} s")
    return info


def expect(info: dict, peak: float, args: argparse.Namespace) -> None:
    """Say how long a step of ours takes at least at the measured peak, and what bounds it."""
    flops = info.get("flops", {}).get("ours")
    if not flops or not peak:
        return
    least = flops / peak / 1e9
    log(
        f"one step of ours is {flops / 1e12:.3f} TFLOP: at least {least:.1f} s at the measured "
        f"peak; timing stops after --max-seconds {args.max_seconds:g} per run"
        + (f", a worker is killed after {args.worker_timeout:g} s" if args.worker_timeout else "")
    )
    if args.worker_timeout and (args.warmup_steps + 1) * least > args.worker_timeout:
        log("note: the warm-up steps + one step will likely not fit in --worker-timeout")


def run_sides(
    raw: list[str], args: argparse.Namespace, sides: list[str], workdir: Path, env: dict
) -> tuple[list[dict], list[str]]:
    """Every (side, round) in ABBA order, each in its own worker; results and notes."""
    results: list[dict] = []
    notes: list[str] = []
    for i, side in enumerate(side_order(sides, args.rounds)):
        log(f"  run {i} {side}: starting worker")
        r = spawn(raw, "run", side, workdir, workdir / f"run-{i}.json", env)
        if "error" in r and "signal 9" in r["error"]:  # a shared machine's memory: retry once
            log(f"  run {i} {side}: {r['error'].splitlines()[-1]}; retrying once")
            notes.append(f"run {i} {side}: {r['error'].splitlines()[-1]}; retried")
            r = spawn(raw, "run", side, workdir, workdir / f"run-{i}.json", env)
        r["run"] = i
        results.append(r)
        if "error" in r:
            log(f"  run {i} {side}: FAILED: {r['error'].splitlines()[-1]}")
            continue
        warm = ", ".join(f"{t:.2f}" for t in r["warmup_s"]) or "none"
        log(
            f"  run {i} {side}: median {r['median_step_s']:.3f} s "
            f"(steps {', '.join(f'{t:.2f}' for t in r['step_times_s'])}; "
            f"warm-up {warm}), peak RSS {gib(r['peak_rss_bytes'])} GiB, "
            f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"
        )
        if "compiled" in r:
            breaks = r["compiled"]["graph_breaks"]
            log(
                f"  run {i} {side}: dynamo made {r['compiled']['graphs']} graph(s), "
                f"{sum(breaks.values())} graph break(s)"
                + "".join(f"\n      {n} x {why}" for why, n in sorted(breaks.items()))
            )
    return results, notes


def header(args: argparse.Namespace, machine: dict, notes: list[str]) -> None:
    """The report's first lines: the machine, the settings, the notes so far."""
    log(describe(machine))
    log(
        f"train step: preset {args.preset}, batch {args.batch_size}, text {args.text_length}, "
        f"sides {args.sides}, precision {args.precision}, "
        f"checkpointing {args.activation_checkpointing}, "
        f"compile {args.compile}, device {args.device}, AdamW {args.optimizer}, "
        f"host memory {args.host_memory}, "
        f"experiments on ours: {args.experiment or 'none'}, "
        f"{args.warmup_steps} warm-up + {args.steps} timed steps x {args.rounds} round(s), "
        f"at most {args.max_seconds:g} s of "
        f"timed steps per run"
    )
    for note in notes:
        log(note if note.startswith("note: ") else f"note: {note}")


def main(argv: list[str] | None = None) -> dict | None:
    """Parent: peak, prepare, alternate the sides, report; or one worker role."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args._role == "prepare":
        args._out.write_text(json.dumps(prepare(args, args._workdir)))
        return None
    if args._role == "run":
        args._out.write_text(json.dumps(run(args, args._side, args._workdir)))
        return None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    machine = machine_info(device)
    notes: list[str] = []
    sides = available_sides(args, notes)
    key, dtype = peak_dtype(args)
    slow = slow_bf16_note(device, machine) if key == "bf16" else None
    header(args, machine, [*notes, *([slow] if slow else [])])
    notes += [slow] if slow else []
    peak_runs = [matmul_peak(device, dtype, args.peak_seconds)]
    env = worker_env(args)
    if env.get("OMP_WAIT_POLICY") and "OMP_WAIT_POLICY" not in os.environ:
        notes.append("OMP_WAIT_POLICY=PASSIVE in the workers (compiled CPU kernels)")
        log(f"note: {notes[-1]}")
    with contextlib.ExitStack() as stack:
        if args.cache_dir:
            key_dir = f"{args.preset}-b{args.batch_size}-t{args.text_length}-{args.device}"
            workdir = args.cache_dir / key_dir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flava-bench-")))
        info = get_info(raw, args, workdir, env)
        expect(info, peak_runs[0]["gflops"], args)
        results, run_notes = run_sides(raw, args, sides, workdir, env)
    notes += run_notes
    peak_runs.append(matmul_peak(device, dtype, args.peak_seconds))
    peak = max(r["gflops"] for r in peak_runs)
    summary = summarise(results, info, peak, args)
    print_table(summary, info, peak, args)
    print_profiles(results)
    report = report_head("train_step.py", raw, args, machine) | {
        "matmul_peak_gflops": {key: peak},
        "matmul_peak_runs": peak_runs,
        "info": info,
        "notes": notes,
        "runs": results,
        "summary": summary,
    }
    write_report(args.json, report)
    return report


if __name__ == "__main__":
    main()
