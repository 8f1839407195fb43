"""`python -m flava.evaluate [config=evaluation/paper.yaml] [key=value ...]`: the paper's table.

Runs every task of a suite whose data is on disk, each in its own command's protocol (linear
probe with the L2 sweep, fine-tuning with the paper's head and recipe, zero-shot retrieval with
every caption), and writes one table: task, ours, the paper's figure, the difference, and the
vision / NLP / multimodal and overall macro averages over the tasks that ran.

Examples:
    python -m flava.evaluate model.pretrained_model_key=flava_full data.root=/data
    python -m flava.evaluate config=evaluation/zero_shot.yaml data.root=/data     # minutes
    python -m flava.evaluate data.root=/data --plan     # tasks, data found, GPU-hours; no run
    python -m flava.evaluate data.root=/data only=[cifar10,mnli] run.finetune_scale=0.1
    python -m flava.evaluate config=my_suite.yaml              # your own list of tasks
Suites: evaluation/paper.yaml (the 35 tasks), evaluation/zero_shot.yaml (retrieval and
zero-shot classification only). A task whose data is not under data.root is a line of the
table ("not on disk: how to get it"); a task that fails is recorded and the suite goes on.
Writes <run.run_dir>/results/<task>.json as each task finishes (a rerun skips finished tasks;
run.rerun=true runs them again), table.md, table.csv, metrics.json and figure.png.
Keys: `python -m flava.evaluate --help`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flava.config import FinetuneConfig
from flava.config.evaluate import Command, EvaluateConfig, TaskSpec, validate_suite
from flava.tasks.suite import (
    TaskResult,
    format_root,
    load_result,
    missing_paths,
    read_figure,
    save_result,
    selected_tasks,
    tee_stderr,
    write_report,
)

log = logging.getLogger("flava")


def command_main(command: str) -> Callable[[list[str]], int]:
    """The `main(argv)` of a command of the suite."""
    if command == "linear_probe":
        from flava.linear_probe import main
    elif command == "finetune":
        from flava.finetune import main
    elif command == "retrieval":
        from flava.retrieval import main
    elif command == "zero_shot":
        from flava.zero_shot import main
    else:
        raise ValueError(f"command {command!r} is invalid: use {', '.join(Command.values())}")
    return main


def finetune_config(argv: list[str]) -> FinetuneConfig:
    """The fine-tuning command's validated config for this dotlist (through its own loader)."""
    from flava.config import load_config
    from flava.tasks.finetuning import validate_config

    return load_config(argv, FinetuneConfig, validate_config)


def finetune_scaling(argv: list[str], factor: float, cap: int | None) -> list[str]:
    """Overrides that scale a fine-tuning recipe's steps (max, warm-up, validation) by `factor`,
    at most `cap` steps."""
    if factor == 1.0 and cap is None:
        return []
    t = finetune_config(argv).training
    steps = max(1, math.ceil(t.lightning.max_steps * factor))
    steps = steps if cap is None else min(steps, cap)
    out = [
        f"training.lightning.max_steps={steps}",
        f"training.warmup_steps={min(steps - 1, math.ceil(t.warmup_steps * factor))}",
    ]
    every = t.lightning.val_check_interval
    if isinstance(every, int):
        out.append(f"training.lightning.val_check_interval={min(steps, math.ceil(every * factor))}")
    return out


def task_argv(task: TaskSpec, cfg: EvaluateConfig, run_dir: Path) -> list[str]:
    """The command line of one task: its dotlist, then the model and the run's own settings."""
    root = str(cfg.data.root)
    argv = [format_root(a, root) for a in task.args]
    key = cfg.model.pretrained_model_key  # every task starts from the suite's model
    argv += [f"model.preset={cfg.model.preset}", f"model.pretrained_model_key={key or 'null'}"]
    if task.command == "finetune":
        argv += [*cfg.run.finetune_args, f"training.run_dir={run_dir}"]
        scale, cap = float(cfg.run.finetune_scale), cfg.run.finetune_max_steps
        return argv + finetune_scaling(argv, scale, cap)
    return argv + [*cfg.run.eval_args, f"run.run_dir={run_dir}", f"run.device={cfg.run.device}"]


def _last_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    return lines[-1][len("error:") :].strip() if lines else ""


def run_task(task: TaskSpec, cfg: EvaluateConfig, out: Path) -> TaskResult:
    """Run one task in-process; a failure of any kind becomes the result's one-line detail."""
    result = TaskResult(task.name, task.group, "failed", paper=task.paper)
    absent = missing_paths(task, str(cfg.data.root))
    if absent:
        where = ", ".join(str(Path(str(cfg.data.root)) / p) for p in absent)
        result.status, result.detail = "missing", f"not on disk ({where}): {task.get}"
        return result
    run_dir = out / "tasks" / task.name
    start = time.perf_counter()
    try:
        argv = task_argv(task, cfg, run_dir)
        with tee_stderr() as err:
            rc = command_main(task.command)(argv)
        if rc != 0:
            result.detail = _last_error(err.getvalue()) or f"{task.command} exited with {rc}"
        else:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            result.value, result.metrics = read_figure(task, metrics), metrics
            result.status = "ok"
    except Exception as exc:  # one task's crash is a row of the table, not the suite's end
        text = str(exc).strip().splitlines()
        result.detail = f"{type(exc).__name__}: {text[0] if text else ''}"
        log.exception("task %s failed", task.name)
    result.seconds = round(time.perf_counter() - start, 1)
    return result


def run_suite(cfg: EvaluateConfig) -> list[TaskResult]:
    """Run every task of the suite (skipping finished ones), then write the table."""
    out = Path(str(cfg.run.run_dir))
    tasks = selected_tasks(cfg)
    results: list[TaskResult] = []
    begun = time.perf_counter()
    for i, task in enumerate(tasks, 1):
        done = None if cfg.run.rerun else load_result(out, task.name)
        if done is not None:
            log.info("[%d/%d] %s: %.2f, finished earlier", i, len(tasks), task.name, done.value)
            results.append(done)
            continue
        log.info("[%d/%d] %s (%s, %s) ...", i, len(tasks), task.name, task.group, task.command)
        result = run_task(task, cfg, out)
        save_result(out, result)
        results.append(result)
        shown = f"{result.value:.2f}" if result.value is not None else result.status
        elapsed = time.perf_counter() - begun
        log.info(
            "[%d/%d] %s: %s in %.1f s (%d left; %.0f s in all)",
            *(i, len(tasks), task.name, shown, result.seconds, len(tasks) - i, elapsed),
        )
    write_report(out, results, str(cfg.suite))
    return results


# --------------------------------------------------------------------------- plan


def task_flops(task: TaskSpec, cfg: EvaluateConfig) -> float:
    """Estimated FLOPs of one task from `flava.planning`'s counts (encoding 1x, training 3x)."""
    from flava.model.presets import preset
    from flava.planning import encoder_forward_flops

    if task.command != "finetune":
        model = preset(str(cfg.model.preset))
        image = encoder_forward_flops(model.image, model.image.grid_size**2 + 1)
        return task.images * image + task.texts * encoder_forward_flops(model.text, 77)
    fc = finetune_config(task_argv(task, cfg, Path(str(cfg.run.run_dir)) / "plan"))
    model = preset(str(fc.model.preset))
    n_img, n_txt = model.image.grid_size**2 + 1, int(fc.data.text_max_length)
    image = encoder_forward_flops(model.image, n_img)
    text = encoder_forward_flops(model.text, n_txt)
    fused = encoder_forward_flops(model.multimodal, 1 + n_img + n_txt)
    per = {"image": image, "text": text, "multimodal": image + text + fused}
    samples = fc.training.lightning.max_steps * fc.training.batch_size
    return 3.0 * samples * per[str(fc.task.modality)]


def plan_suite(cfg: EvaluateConfig) -> str:
    """Tasks, data found and estimated GPU-hours per task and in all, before running anything."""
    tasks = selected_tasks(cfg)
    rate = float(cfg.run.mfu) * float(cfg.run.gpu_tflops) * 1e12
    lines = [
        f"suite {cfg.suite}: {len(tasks)} tasks, data.root={cfg.data.root}, model "
        f"{cfg.model.pretrained_model_key or cfg.model.preset} (preset {cfg.model.preset}); "
        f"GPU-hours at MFU {float(cfg.run.mfu):.0%} of {float(cfg.run.gpu_tflops):g} TFLOP/s",
        f"  {'task':<16} {'group':<11} {'command':<13} {'data':<8} GPU-h",
    ]
    total, found = 0.0, 0
    for t in tasks:
        on_disk = not missing_paths(t, str(cfg.data.root))
        found += on_disk
        try:
            hours = task_flops(t, cfg) / rate / 3600
            total += hours
            shown = f"{hours:.3g}"
        except Exception as exc:  # an estimate that cannot be made says why
            shown = f"no estimate ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})"
        where = "found" if on_disk else "missing"
        lines.append(f"  {t.name:<16} {t.group:<11} {t.command:<13} {where:<8} {shown}")
    lines.append(f"data on disk for {found} of {len(tasks)} tasks; estimated {total:.3g} GPU-h")
    return "\n".join(lines)


def _run(cfg: EvaluateConfig) -> object:
    if cfg.run.plan:
        print(plan_suite(cfg))
        return None
    return run_suite(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad configuration)."""
    from flava.config import cli_main, describe, load_config

    argv = [
        "run.plan=true" if a == "--plan" else a for a in (sys.argv[1:] if argv is None else argv)
    ]
    if not any(a.startswith("config=") for a in argv):
        argv.insert(0, "config=evaluation/paper.yaml")
    return cli_main(
        argv,
        __doc__,
        lambda: describe(EvaluateConfig),
        lambda a: load_config(a, EvaluateConfig, validate_suite),
        _run,
    )


if __name__ == "__main__":
    sys.exit(main())
