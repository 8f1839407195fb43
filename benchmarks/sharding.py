"""FSDP2 (`training.lightning.strategy=fsdp`) against DDP (`strategy=ddp`): step time and
per-process peak memory of the real training command with several processes on this CPU (gloo).

    python benchmarks/sharding.py                                   # flava_full, 2 processes
    python benchmarks/sharding.py --preset tiny --steps 4 --rounds 1 --json out.json

Each run is `python -m torch.distributed.run --nproc_per_node N benchmarks/sharding.py ...` with
this file as a thin wrapper around `flava.train.main`: it adds one Lightning callback that
records, per process, `time.perf_counter()` when each optimizer step ends (the CSV logger has no
time column) and the resident set size: when the wrapper starts (Python, torch, Lightning and
flava imported, before the model and data are built: the baseline), when training starts (model
built and wrapped or sharded, optimizer created, no AdamW state yet) and the peak
(`ru_maxrss`) after each step. After the last step every process writes its figures and exits
at once: the closing validation, the model export and the final checkpoint are not part of what
is measured (the periodic checkpoint is set beyond the run's steps). The training is that of
`config=pretraining/demo.yaml` with the chosen preset: k-means MIM targets (no DALL-E weights),
embedded generated data, fp32, pair (image-text) batches only (`datasets.selected=[vl]`: every
objective of the pair step), no evaluation, no validation batches.

A step's time is the interval between the ends of consecutive optimizer steps (data loading in
the main process included; `training.num_workers=0`), the slowest process's; the first
--warmup-steps are left out. Runs alternate ABAB (fsdp, ddp, fsdp, ddp, ...) in one invocation
so that a shared machine's load hits both; every ratio is FSDP2 / DDP from the same invocation.

Nothing waits unbounded: a run stops taking steps once --max-seconds of timed steps have passed
(the processes agree on it after every step; at least one timed step), and a run still going
after --worker-timeout is killed with its whole process group. Memory is guarded too: a run
starts only when MemAvailable is at least --min-available-gib (waiting up to --memory-wait
seconds for other work to finish, else the run is skipped and reported), and is killed if
MemAvailable falls below --min-headroom-gib while it runs, before the machine starts swapping
or the kernel's OOM killer picks a victim. The report starts with the CPU (model, torch's CPU
capability); this benchmark always runs fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe, log, machine_info, report_head, rss_now, rss_peak, write_report

REPO = Path(__file__).resolve().parent.parent
STRATEGIES = ("fsdp", "ddp")
WORKER_FLAG = "--_worker"


# ----------------------------------------------------------------------------- memory


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes ({} where there is none)."""
    out: dict[str, int] = {}
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def available() -> int | None:
    """MemAvailable in bytes (None where unknown)."""
    return meminfo().get("MemAvailable")


def gib(n: float | None) -> str:
    """Bytes as GiB with two decimals ('-' when missing)."""
    return "-" if n is None else f"{n / 2**30:.2f}"


# ----------------------------------------------------------------------------- the worker


def worker(argv: list[str]) -> int:
    """Under torchrun: flava.train.main(overrides) with the step-clock callback added."""
    baseline_start = rss_now()
    import lightning as L
    import torch

    import flava.train

    baseline = rss_now()  # Python + torch + Lightning + flava, before the model and the data
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--warmup-steps", type=int, required=True)
    p.add_argument("--max-seconds", type=float, required=True)
    opts = p.parse_args(argv[:split])
    overrides = argv[split + 1 :]
    rank = int(os.environ.get("RANK", "0"))

    class StepClock(L.Callback):
        """Step end times and memory per process; stops after --max-seconds of timed steps."""

        def __init__(self) -> None:
            self.record: dict[str, Any] = {
                "rank": rank,
                "pid": os.getpid(),
                "rss_at_wrapper_start_bytes": baseline_start,
                "baseline_rss_bytes": baseline,
                "step_end_s": [],
                "peak_rss_after_step_bytes": [],
                "rss_after_step_bytes": [],
                "losses": [],
            }

        def on_train_start(self, trainer: Any, module: Any) -> None:
            params = [p for p in module.parameters() if p.requires_grad]
            local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in params)
            self.record.update(
                train_start_s=time.perf_counter(),
                train_start_rss_bytes=rss_now(),
                train_start_peak_rss_bytes=rss_peak(),
                trainable_parameters=sum(p.numel() for p in params),
                local_trainable_elements=local,
                world_size=trainer.world_size,
                torch_threads=torch.get_num_threads(),
                strategy=type(trainer.strategy).__name__,
            )

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, i: int) -> None:
            self.record.setdefault("first_step_start_s", time.perf_counter())

        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, i: int
        ) -> None:
            r = self.record
            r["step_end_s"].append(time.perf_counter())
            r["peak_rss_after_step_bytes"].append(rss_peak())
            r["rss_after_step_bytes"].append(rss_now())
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            with contextlib.suppress(Exception):
                r["losses"].append(float(loss.detach()))
            ends = r["step_end_s"]
            timed = len(ends) - opts.warmup_steps
            over = timed >= 1 and ends[-1] - ends[opts.warmup_steps - 1] >= opts.max_seconds
            if opts.warmup_steps == 0 and timed >= 1:
                over = ends[-1] - r["first_step_start_s"] >= opts.max_seconds
            # every process must stop after the same step: any process over the limit stops all
            if trainer.strategy.reduce_boolean_decision(bool(over), all=False):
                if not trainer.should_stop and trainer.global_step < (trainer.max_steps or 0):
                    r["stopped_by_max_seconds"] = True
                trainer.should_stop = True

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.record["global_step"] = trainer.global_step
            opts.out.with_name(f"{opts.out.name}.rank{rank}.json").write_text(
                json.dumps(self.record)
            )
            trainer.strategy.barrier("sharding_benchmark_done")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # skip the closing validation, the export and the final checkpoint

    clock = StepClock()
    real = flava.train.build_trainer

    def build_trainer(cfg: Any, run_dir: Any, callbacks: list) -> Any:
        return real(cfg, run_dir, [*callbacks, clock])

    flava.train.build_trainer = build_trainer
    return flava.train.main(overrides)


# ----------------------------------------------------------------------------- the parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="flava_full", help="model preset (default flava_full)")
    p.add_argument("--nproc", type=int, default=2, help="processes per run (default 2)")
    p.add_argument(
        "--batch-size", type=int, default=2, help="pairs per process per step (default 2)"
    )
    p.add_argument(
        "--steps", type=int, default=5, help="optimizer steps per run, warm-up included (5)"
    )
    p.add_argument(
        "--warmup-steps", type=int, default=1, help="first steps of a run left out (default 1)"
    )
    p.add_argument("--rounds", type=int, default=2, help="runs per strategy, ABAB (default 2)")
    p.add_argument(
        "--strategies", default="fsdp,ddp", help="comma-separated, in ABAB order (fsdp,ddp)"
    )
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process (1)")
    p.add_argument("--kmeans-images", type=int, default=64, help="model.kmeans_images (64)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra flava.train override for both strategies (repeatable)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable of every run's processes, both strategies (repeatable), e.g. "
        "MALLOC_MMAP_THRESHOLD_=65536 so that freed large blocks leave the RSS",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="per run: no further step starts after this many seconds of timed steps "
        "(default 600; at least one timed step)",
    )
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=1200.0,
        help="kill a run (torchrun and its processes) after this many seconds and report it as "
        "failed (default 1200)",
    )
    p.add_argument(
        "--min-available-gib",
        type=float,
        default=12.0,
        help="start a run only when MemAvailable is at least this (default 12)",
    )
    p.add_argument(
        "--memory-wait",
        type=float,
        default=300.0,
        help="wait up to this many seconds for --min-available-gib, else skip the run (300)",
    )
    p.add_argument(
        "--min-headroom-gib",
        type=float,
        default=1.0,
        help="kill a run when MemAvailable falls below this while it runs (default 1)",
    )
    p.add_argument("--keep", type=Path, help="keep the run directories and logs under this folder")
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    return p.parse_args(argv)


def free_port() -> int:
    """A TCP port nobody is listening on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(args: argparse.Namespace, strategy: str, run_dir: Path) -> list[str]:
    """The flava.train command line of one run."""
    return [
        "config=pretraining/demo.yaml",
        f"model.preset={args.preset}",
        "model.mim_target=kmeans",
        f"model.kmeans_images={args.kmeans_images}",
        f"training.batch_size={args.batch_size}",
        "training.num_workers=0",
        "training.evaluation.enabled=false",
        f"training.lightning.max_steps={args.steps}",
        f"training.lightning.strategy={strategy}",
        f"training.lightning.devices={args.nproc}",
        "training.lightning.precision=32",
        "training.lightning.limit_val_batches=0",
        f"training.lightning_checkpoint.every_n_train_steps={args.steps + 1000}",
        "training.lightning.log_every_n_steps=1",
        "training.lightning.enable_progress_bar=false",
        "training.compile=false",
        f"training.run_dir={run_dir}",
        "datasets.selected=[vl]",
        "datasets.sampling=round_robin",
        *args.set,
    ]


def command(args: argparse.Namespace, strategy: str, run_dir: Path, out: Path) -> list[str]:
    """torchrun running this file as the wrapper of flava.train."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(args.nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(Path(__file__).resolve()),
        WORKER_FLAG,
        "--out",
        str(out),
        "--warmup-steps",
        str(args.warmup_steps),
        "--max-seconds",
        str(args.max_seconds),
        "--",
        *overrides(args, strategy, run_dir),
    ]


def wait_for_memory(args: argparse.Namespace, label: str) -> str | None:
    """None once MemAvailable >= --min-available-gib; the reason to skip after --memory-wait."""
    need = args.min_available_gib * 2**30
    deadline = time.monotonic() + args.memory_wait
    said = False
    while True:
        have = available()
        if have is None or have >= need:
            return None
        if time.monotonic() >= deadline:
            return (
                f"skipped: MemAvailable {gib(have)} GiB < --min-available-gib "
                f"{args.min_available_gib:g} after waiting {args.memory_wait:g} s"
            )
        if not said:
            log(f"  {label}: MemAvailable {gib(have)} GiB, waiting for {gib(need)} GiB...")
            said = True
        time.sleep(5)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's whole process group (torchrun and its processes)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def launch(args: argparse.Namespace, strategy: str, workdir: Path, label: str) -> dict[str, Any]:
    """One run under --worker-timeout and the memory guard; its per-process records."""
    run_dir = workdir / label
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "clock"
    cmd = command(args, strategy, run_dir, out)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        **dict(item.split("=", 1) for item in args.env),
    }
    result: dict[str, Any] = {"strategy": strategy, "label": label, "run_dir": str(run_dir)}
    why = wait_for_memory(args, label)
    if why:
        return {**result, "error": why}
    result["mem_available_at_start_bytes"] = available()
    log_path = run_dir / "torchrun.log"
    start = time.monotonic()
    least = available() or 0
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        error = None
        while proc.poll() is None:
            time.sleep(1)
            have = available()
            if have is not None:
                least = min(least, have)
                if have < args.min_headroom_gib * 2**30:
                    kill_group(proc)
                    error = (
                        f"killed: MemAvailable fell to {gib(have)} GiB (< --min-headroom-gib "
                        f"{args.min_headroom_gib:g}); retry when the machine is quieter"
                    )
                    break
            if time.monotonic() - start > args.worker_timeout:
                kill_group(proc)
                error = f"killed after --worker-timeout {args.worker_timeout:g} s"
                break
    result["wall_s"] = time.monotonic() - start
    result["least_mem_available_bytes"] = least
    records = [out.with_name(f"{out.name}.rank{r}.json") for r in range(args.nproc)]
    if error is None and proc.returncode:
        error = f"torchrun exit status {proc.returncode}"
    if error is None and not all(p.exists() for p in records):
        error = "a process wrote no figures"
    if error:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        return {**result, "error": error, "log_tail": tail}
    ranks = [json.loads(p.read_text()) for p in records]
    return {**result, **summarise_run(ranks, args), "ranks": ranks}


def summarise_run(ranks: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """Step times (the slowest process's interval per step) and memory of one run."""
    per_rank = []
    for r in ranks:
        ends = r["step_end_s"]
        per_rank.append(
            [ends[0] - r["first_step_start_s"]]
            + [b - a for a, b in zip(ends, ends[1:], strict=False)]
        )
    steps = min(len(t) for t in per_rank)
    intervals = [max(t[i] for t in per_rank) for i in range(steps)]
    timed = intervals[args.warmup_steps :]
    peak = [r["peak_rss_after_step_bytes"][-1] for r in ranks]
    return {
        "steps": steps,
        "warmup_s": intervals[: args.warmup_steps],
        "step_times_s": timed,
        "median_step_s": statistics.median(timed) if timed else None,
        "stopped_by_max_seconds": any(r.get("stopped_by_max_seconds") for r in ranks),
        "losses_rank0": ranks[0]["losses"],
        "peak_rss_bytes": max(peak),
        "peak_rss_per_rank_bytes": peak,
        "baseline_rss_per_rank_bytes": [r["baseline_rss_bytes"] for r in ranks],
        "peak_minus_baseline_bytes": max(
            p - r["baseline_rss_bytes"] for p, r in zip(peak, ranks, strict=True)
        ),
        "train_start_rss_per_rank_bytes": [r["train_start_rss_bytes"] for r in ranks],
        "peak_minus_train_start_bytes": max(
            p - r["train_start_rss_bytes"] for p, r in zip(peak, ranks, strict=True)
        ),
        "trainable_parameters": ranks[0]["trainable_parameters"],
        "local_trainable_elements": [r["local_trainable_elements"] for r in ranks],
    }


def order(strategies: list[str], rounds: int) -> list[str]:
    """ABAB: every strategy once per round, in the same order."""
    return [s for _ in range(rounds) for s in strategies]


def summarise(results: list[dict]) -> dict[str, Any]:
    """Per strategy over its rounds: median step, worst peaks; FSDP2 / DDP ratios."""
    summary: dict[str, Any] = {}
    for r in results:
        if "error" in r:
            summary.setdefault(r["strategy"], {"errors": []}).setdefault("errors", []).append(
                r["error"]
            )
            continue
        s = summary.setdefault(r["strategy"], {})
        s.setdefault("times", []).extend(r["step_times_s"])
        for key in ("peak_rss_bytes", "peak_minus_baseline_bytes", "peak_minus_train_start_bytes"):
            s.setdefault(key + "_runs", []).append(r[key])
        s["trainable_parameters"] = r["trainable_parameters"]
        s["local_trainable_elements"] = r["local_trainable_elements"]
    for s in summary.values():
        if s.get("times"):
            s["median_step_s"] = statistics.median(s["times"])
            s["mean_step_s"] = statistics.mean(s["times"])
            for key in (
                "peak_rss_bytes",
                "peak_minus_baseline_bytes",
                "peak_minus_train_start_bytes",
            ):
                s[key] = max(s[key + "_runs"])
    a, b = summary.get("fsdp", {}), summary.get("ddp", {})
    if "median_step_s" in a and "median_step_s" in b:
        summary["ratio_fsdp_over_ddp"] = {
            "step_time": a["median_step_s"] / b["median_step_s"],
            "peak_rss": a["peak_rss_bytes"] / b["peak_rss_bytes"],
            "peak_minus_baseline": a["peak_minus_baseline_bytes"] / b["peak_minus_baseline_bytes"],
            "peak_minus_train_start": a["peak_minus_train_start_bytes"]
            / b["peak_minus_train_start_bytes"],
        }
    return summary


def print_table(summary: dict, target: float) -> None:
    """Human-readable result table and the ratios."""
    head = (
        f"{'strategy':<10}{'step s (median)':>16}{'mean':>8}{'steps':>7}{'peak RSS GiB':>14}"
        f"{'- baseline':>12}{'- train start':>15}"
    )
    print("\n" + head)
    print("-" * len(head))
    for name in STRATEGIES:
        s = summary.get(name)
        if s is None:
            continue
        if "median_step_s" not in s:
            print(f"{name:<10}failed: {s['errors'][-1]}")
            continue
        print(
            f"{name:<10}{s['median_step_s']:>16.3f}{s['mean_step_s']:>8.2f}{len(s['times']):>7}"
            f"{gib(s['peak_rss_bytes']):>14}{gib(s['peak_minus_baseline_bytes']):>12}"
            f"{gib(s['peak_minus_train_start_bytes']):>15}"
        )
        for err in s.get("errors", []):
            print(f"{'':<10}(one run failed: {err})")
    ratio = summary.get("ratio_fsdp_over_ddp")
    if ratio:
        print(
            f"FSDP2 / DDP: step time {ratio['step_time']:.3f}x, per-process peak RSS "
            f"{ratio['peak_rss']:.3f}x (target <= {target:g}x: "
            f"{'met' if ratio['peak_rss'] <= target else 'not met'}), peak - baseline "
            f"{ratio['peak_minus_baseline']:.3f}x, peak - train start "
            f"{ratio['peak_minus_train_start']:.3f}x"
        )
    ddp = summary.get("ddp", {})
    if ddp.get("trainable_parameters"):
        n = ddp["trainable_parameters"]
        world = len(ddp["local_trainable_elements"])
        print(
            f"fp32 AdamW training state (parameters, gradients, two moments): "
            f"{gib(16 * n)} GiB per process under DDP ({n / 1e6:.1f} M trainable parameters), "
            f"{gib(16 * n / world)} GiB per process when sharded over {world}"
        )


def git_state() -> dict[str, Any]:
    """The commit and whether src/ differs from it (others may edit the checkout meanwhile)."""

    def git(*a: str) -> str:
        try:
            done = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "src_changed": git("status", "--short", "src")}


def main(argv: list[str] | None = None) -> dict | None:
    """Parent: alternate the strategies, each run under torchrun; report."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == [WORKER_FLAG]:
        sys.exit(worker(raw[1:]))
    args = parse_args(raw)
    import torch

    torch.set_num_threads(args.threads)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise SystemExit(
            f"--strategies: unknown {sorted(unknown)} (known: {', '.join(STRATEGIES)})"
        )
    if args.warmup_steps >= args.steps:
        raise SystemExit("--steps must exceed --warmup-steps (at least one timed step)")
    if any("=" not in item for item in args.env):
        raise SystemExit("--env takes NAME=VALUE")
    machine = machine_info()
    mem = meminfo()
    log(describe(machine))
    log(
        f"memory: {gib(mem.get('MemTotal'))} GiB total, {gib(mem.get('MemAvailable'))} GiB "
        f"available; every run starts only with >= {args.min_available_gib:g} GiB available"
    )
    log(
        f"sharding: preset {args.preset}, {args.nproc} processes (gloo, OMP_NUM_THREADS="
        f"{args.threads}), batch {args.batch_size} pairs per process, fp32, {args.steps} steps "
        f"per run ({args.warmup_steps} warm-up left out), {args.rounds} round(s) of "
        f"{', '.join(strategies)}; at most {args.max_seconds:g} s of timed steps per run, a run "
        f"is killed after {args.worker_timeout:g} s"
        + (f"; environment of the runs: {' '.join(args.env)}" if args.env else "")
    )
    git = git_state()
    if git["src_changed"]:
        log(f"note: src/ differs from {git['commit'][:10]} (uncommitted changes by others)")
    results: list[dict] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = args.keep
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flava-shard-")))
        for i, strategy in enumerate(order(strategies, args.rounds)):
            label = f"run{i}-{strategy}"
            log(f"  {label}: starting torchrun ({gib(available())} GiB available)")
            r = launch(args, strategy, workdir, label)
            r["run"] = i
            results.append(r)
            if "error" in r:
                log(f"  {label}: FAILED: {r['error']}")
                for line in r.get("log_tail", []):
                    log(f"    | {line}")
                continue
            log(
                f"  {label}: median {r['median_step_s']:.2f} s/step (steps "
                f"{', '.join(f'{t:.2f}' for t in r['step_times_s'])}; warm-up "
                f"{', '.join(f'{t:.2f}' for t in r['warmup_s'])}), peak RSS per process "
                f"{' / '.join(gib(p) for p in r['peak_rss_per_rank_bytes'])} GiB (baseline "
                f"{' / '.join(gib(p) for p in r['baseline_rss_per_rank_bytes'])}, at train start "
                f"{' / '.join(gib(p) for p in r['train_start_rss_per_rank_bytes'])}), least "
                f"MemAvailable {gib(r['least_mem_available_bytes'])} GiB, loss "
                f"{r['losses_rank0'][0]:.4f} -> {r['losses_rank0'][-1]:.4f}, {r['wall_s']:.0f} s"
                + (" (cut by --max-seconds)" if r["stopped_by_max_seconds"] else "")
            )
    summary = summarise(results)
    target = 0.75
    print_table(summary, target)
    report = report_head("sharding.py", raw, args, machine)
    report["machine"]["memory_bytes"] = mem
    report |= {
        "git": git,
        "target_peak_ratio": target,
        "runs": results,
        "summary": summary,
    }
    write_report(args.json, report)
    return report


if __name__ == "__main__":
    main()
