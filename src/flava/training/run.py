"""Run set-up shared by the entry points: run directory, trainer, loggers, reports."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from flava.config import ConfigError, make_directory, to_yaml
from flava.config.common import LOGGER_INSTALLS, mlflow_uri

log = logging.getLogger("flava")


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create the run directory and save the resolved config as config.yaml."""
    run_dir = make_directory(cfg.training.run_dir, "training.run_dir")
    if int(os.environ.get("RANK", "0")) == 0:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    return run_dir


def _strategy(name: str) -> Any:
    """Lightning strategy by name; DDP tolerates the parameters a batch kind leaves unused."""
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True)
    if name == "fsdp":  # FSDP2 (fully_shard) per layer, through Lightning, on CPU and GPU
        from flava.training.sharding import ShardedStrategy

        return ShardedStrategy()
    return name


def _logger(name: str, run_dir: Path, t: DictConfig) -> Any:
    """One Lightning logger of training.loggers: CSV and TensorBoard under <run_dir>/logs, wandb
    under <run_dir>/wandb, MLflow in training.mlflow_tracking_uri (default <run_dir>/mlflow.db)."""
    from lightning.pytorch import loggers

    if name == "csv":
        return loggers.CSVLogger(save_dir=str(run_dir), name="logs", version="")
    if name == "tensorboard":
        return loggers.TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard")
    if name == "wandb":  # WANDB_MODE=offline: an offline run under <run_dir>/wandb, no network
        finish_wandb()
        return loggers.WandbLogger(run_dir.name, str(run_dir), project=t.logger_project)
    return loggers.MLFlowLogger(t.logger_project, run_dir.name, tracking_uri=mlflow_uri(t))


def _loggers(run_dir: Path, t: DictConfig) -> list[Any]:
    """The loggers of training.loggers, in its order (their packages were checked when the
    config was loaded; one a version Lightning refuses still fails in one line). MLflow's only
    on rank 0: its client opens the store at once, and the ranks of torchrun start together."""
    from lightning.pytorch.utilities import rank_zero_only

    names = [str(name) for name in t.loggers]
    if rank_zero_only.rank != 0:  # only rank 0 logs; the others keep csv for their callbacks
        names = [name for name in names if name != "mlflow"]
    out = []
    for name in names:
        try:
            out.append(_logger(name, run_dir, t))
        except ImportError as exc:  # e.g. a version Lightning refuses
            why = str(exc).strip().splitlines()[0]
            install = LOGGER_INSTALLS.get(name, "reinstall flava")
            message = f"training.loggers: {name} cannot start ({why}); {install}"
            raise ConfigError(message) from None
    return out


def finish_wandb() -> None:
    """Finish a wandb run that an earlier command left open in this process (Lightning's
    WandbLogger would log into it); a run's last one finishes when the process exits."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    """A Lightning Trainer from training.lightning, with training.loggers' logs, checkpoints."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from flava.training.console import console_callbacks
    from flava.training.kernels import kernel_callbacks
    from flava.training.precision import lightning_precision, target_device

    lc = cfg.training.lightning
    ck = cfg.training.lightning_checkpoint
    if cfg.training.lightning_load_from_checkpoint and int(os.environ.get("RANK", "0")) == 0:
        keep_earlier_logs(run_dir)
    loggers = _loggers(run_dir, cfg.training)
    checkpoint = ModelCheckpoint(
        dirpath=ck.dirpath or str(run_dir / "checkpoints"),
        filename=ck.filename,
        every_n_train_steps=ck.every_n_train_steps,
        save_last=ck.save_last,
        save_top_k=ck.save_top_k,
        save_on_train_epoch_end=ck.save_on_train_epoch_end,
        verbose=ck.verbose,
    )
    precision = lightning_precision(lc)  # checked against the hardware, auto resolved
    show_bar, console = console_callbacks(lc.enable_progress_bar, lc.log_every_n_steps)
    accelerator, devices = lc.accelerator, lc.devices
    if lc.gpus is not None:  # the original release's spelling
        accelerator, devices = "gpu", lc.gpus
    set_host_memory(cfg.training.host_memory, lc.strategy, target_device(lc) == "cpu")
    kernels = kernel_callbacks(cfg.training.attention_kernel, lc.deterministic)
    return L.Trainer(
        max_steps=lc.max_steps,
        max_epochs=lc.max_epochs if lc.max_epochs is not None else -1,
        max_time=lc.max_time,
        accelerator=accelerator,
        devices=devices,
        num_nodes=lc.num_nodes,
        strategy=_strategy(lc.strategy),
        precision=precision,
        gradient_clip_val=lc.gradient_clip_val,
        accumulate_grad_batches=lc.accumulate_grad_batches,
        val_check_interval=lc.val_check_interval,
        check_val_every_n_epoch=None if lc.val_check_interval else 1,
        limit_val_batches=lc.limit_val_batches,
        num_sanity_val_steps=lc.num_sanity_val_steps,
        log_every_n_steps=lc.log_every_n_steps,
        enable_progress_bar=show_bar,  # a step bar on a terminal, else a line every N steps
        enable_model_summary=False,  # console's ParameterSummary replaces it (no FLOPs column)
        deterministic=lc.deterministic,
        logger=loggers,
        callbacks=[
            checkpoint,
            LearningRateMonitor("step"),
            *console,
            *kernels,
            *callbacks,
        ],
        default_root_dir=str(run_dir),
    )


def set_host_memory(policy: str, strategy: str, on_cpu: bool) -> None:
    """Apply `training.host_memory` in this process (every process of a run builds a trainer)
    and say in the log what was done."""
    from flava.training import host_memory

    log.info("training.host_memory=%s: %s", policy, host_memory.apply(policy, strategy, on_cpu))


def keep_earlier_logs(run_dir: Path) -> None:
    """Before a resumed run logs into `run_dir`: keep the CSV log of the runs before it as
    logs/metrics.before-<k>.csv (Lightning's CSV logger would write over it)."""
    path = run_dir / "logs" / "metrics.csv"
    if path.exists():
        path.rename(path.with_name(f"metrics.before-{len(_earlier_logs(run_dir))}.csv"))


def _earlier_logs(run_dir: Path) -> list[Path]:
    parts = (run_dir / "logs").glob("metrics.before-*.csv")
    return sorted(parts, key=lambda p: int(p.stem.rpartition("-")[2]))


def _csv_rows(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [
            {k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)
        ]


def read_logged(run_dir: Path) -> list[dict[str, float]]:
    """Rows of the CSV logger (one per logging step), numbers only, across resumes: the rows of
    a run before a resume, then the resumed run's (which redoes the steps after its checkpoint,
    so an earlier part's rows from the resumed run's first step on are dropped)."""
    parts = [*_earlier_logs(run_dir), run_dir / "logs" / "metrics.csv"]
    rows: list[dict[str, float]] = []
    for path in (p for p in parts if p.exists()):
        later = _csv_rows(path)
        steps = [r["step"] for r in later if "step" in r]
        if steps:
            rows = [r for r in rows if r.get("step", -1.0) < min(steps)]
        rows += later
    return rows


def _first_last(prefix: str, series: dict[str, list[float]], window: float) -> dict[str, float]:
    """`<prefix>/<name>/first|last`: means of the first and last `window` of each series."""
    out: dict[str, float] = {}
    for name, raw in series.items():
        values = [v for v in raw if math.isfinite(v)]
        if len(values) < 2:
            continue
        n = max(1, int(len(values) * window))
        out[f"{prefix}/{name}/first"] = sum(values[:n]) / n
        out[f"{prefix}/{name}/last"] = sum(values[-n:]) / n
    return out


def row_kind(row: dict[str, float], kinds: list[str]) -> str | None:
    """The batch kind of a logged training row: the one whose train/loss_<kind> is its loss."""
    loss = row.get("train/loss")
    return next((k for k in kinds if loss is not None and row.get(f"train/loss_{k}") == loss), None)


def fresh_values(rows: list[dict[str, float]], key: str) -> list[float]:
    """A key's logged values with each unchanged repeat dropped.

    Lightning hands the logger every key's latest value, so a row repeats the objectives that
    another kind of batch logged at an earlier step.
    """
    values: list[float] = []
    for row in rows:
        if key in row and (not values or row[key] != values[-1]):
            values.append(row[key])
    return values


def loss_trends(rows: list[dict[str, float]], window: float = 0.1) -> dict[str, float]:
    """First / last `window` means of the training losses, never a total over mixed kinds.

    Pretraining (rows with `train/loss_<kind>`): each kind's total over that kind's rows
    (`train/<kind>/loss/first|last`) and each objective, which one kind computes, over its new
    values (`train/<objective>/first|last`). Fine-tuning: `train/loss/first|last`.
    """
    kinds = sorted(
        {k.removeprefix("train/loss_") for r in rows for k in r if k.startswith("train/loss_")}
    )
    out: dict[str, float] = {}
    for kind in kinds:
        own = [r[f"train/loss_{kind}"] for r in rows if row_kind(r, kinds) == kind]
        out.update(_first_last(f"train/{kind}", {"loss": own}, window))
    names = {k.removeprefix("train/") for r in rows for k in r if k.startswith("train/")}
    names = {n for n in names if not n.startswith("loss_") and not n.endswith("accuracy")}
    names -= {"logit_scale", "loss"} if kinds else {"logit_scale"}
    logged = fresh_values if kinds else lambda rs, k: [r[k] for r in rs if k in r]
    series = {name: logged(rows, f"train/{name}") for name in sorted(names)}
    out.update(_first_last("train", series, window))
    return out


def stop_with_checkpoint(
    trainer: L.Trainer, run_dir: Path, stopped: tuple[str, str], counts: dict[str, Any]
) -> str:
    """Write `checkpoints/<stem>.ckpt` and the counts of a run that stopped early; the one-line
    reason to raise (exit status 1)."""
    stem, message = stopped
    path = run_dir / "checkpoints" / f"{stem}.ckpt"
    trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        write_metrics(run_dir, counts)
    return f"{message}; checkpoint written to {path}"


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """metrics.json with sorted keys."""
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))


def plot_curves(
    run_dir: Path, rows: list[dict[str, float]], history: list[dict[str, float]]
) -> None:
    """curves.png: smoothed training losses per objective, and evaluation metrics over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(
        {
            k
            for r in rows
            for k in r
            if k.startswith("train/")
            and not k.startswith(("train/loss", "train/logit"))
            and not k.endswith("accuracy")
        }
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        pts = [(r["step"], r[name]) for r in rows if name in r and "step" in r]
        pts = [p for i, p in enumerate(pts) if i == 0 or p[1] != pts[i - 1][1]]  # fresh values
        if not pts:
            continue
        steps, values = zip(*pts, strict=True)
        k = max(1, len(values) // 20)
        smooth = [
            sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1])
            for i in range(len(values))
        ]
        marker = "o" if len(steps) < 3 else None  # a line needs two points
        axes[0].plot(steps, smooth, marker=marker, label=name.removeprefix("train/"))
    axes[0].set(title="training losses (smoothed)", xlabel="step", ylabel="loss")
    if axes[0].get_lines():
        axes[0].legend(fontsize=8)
    else:  # a run shorter than training.lightning.log_every_n_steps logs no loss
        _note(axes[0], "no training losses logged\n(fewer steps than log_every_n_steps)")
    plot_evaluation(axes[1], history)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)


def plot_evaluation(ax: Any, history: list[dict[str, float]]) -> None:
    """Retrieval (solid) and zero-shot (dashed) metrics over steps on one matplotlib axis."""
    keys = list(dict.fromkeys(k for h in history for k in h if k != "step"))
    for key in keys:
        pts = [(h["step"], h[key]) for h in history if key in h]
        steps, values = zip(*pts, strict=True)
        style = "--" if key.startswith("zero_shot/") else "-"
        ax.plot(steps, values, style, marker="o", markersize=3, label=key)
    ax.set(title="zero-shot evaluation (validation)", xlabel="step", ylim=(0, 1.02))
    if keys:
        ax.legend(fontsize=7)
    else:
        note = "no evaluation\n(disabled, or no usable vl validation pairs\n"
        _note(ax, note + "nor labelled image validation)")


def _note(ax: Any, text: str) -> None:
    """`text` centred on an empty matplotlib axis (what a panel would have shown, and why not)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes)


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def set_threads() -> None:
    """Use every core for intra-op parallelism unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def check_resume(path: str, key: str) -> str:
    """The checkpoint to resume from, checked before any work (one line, exit 2, when missing,
    incomplete or unsafe): a single file, or a sharded directory (or its `.old` copy, left
    when a crash came between swapping a new checkpoint in and removing the previous one)."""
    from flava.checkpoints.io import read_checkpoint
    from flava.checkpoints.sharded import check_sharded, is_sharded_checkpoint

    old = Path(path + ".old")
    if not Path(path).exists() and is_sharded_checkpoint(old):
        log.warning("%s is missing; resuming from the previous checkpoint %s", path, old)
        path = str(old)
    if Path(path).is_dir():
        check_sharded(path, f"{key}={path}")
    else:
        read_checkpoint(path, key)
    return path


def check_group_layout(path: str, groups: list[tuple[dict, list]]) -> dict[str, Any] | None:
    """The single-file checkpoint at `path`, read safely, after checking that its optimizer
    holds this run's parameter `groups` (`optim.param_groups`, per `training.lr_multipliers`;
    one line, exit 2, when not: AdamW would refuse its state later, with a traceback). None for
    a sharded one."""
    from flava.checkpoints.io import CheckpointError, read_checkpoint
    from flava.checkpoints.sharded import is_sharded_checkpoint

    if is_sharded_checkpoint(path):
        return None
    key = "training.lightning_load_from_checkpoint"
    checkpoint = read_checkpoint(path, key)
    sizes = [len(named) for _, named in groups]
    for state in checkpoint.get("optimizer_states", []):
        saved = [len(group["params"]) for group in state.get("param_groups", [])]
        if saved != sizes:
            raise CheckpointError(
                f"{key}={path}: its optimizer has parameter groups of {saved} parameters, this "
                f"run's {sizes}; resume with the training.lr_multipliers it was saved with (see "
                "config.yaml in its run directory)"
            )
    return checkpoint


def resume_for_strategy(path: str, strategy: str, module: L.LightningModule, run_dir: Path) -> str:
    """`path` in the layout the strategy reads: a sharded checkpoint consolidated into one file
    for DDP / one process; a single file's optimizer state keyed by parameter name for `fsdp`
    (Lightning would otherwise key it by the order of named_parameters, not of the optimizer's
    groups). Conversions are written per process under `<run_dir>/.resume/`."""
    from flava.checkpoints.sharded import write_consolidated
    from flava.training.optim import param_groups

    groups = param_groups(module.model.named_parameters(), module.cfg.training)
    checkpoint = check_group_layout(path, groups)
    sharded = checkpoint is None
    if sharded == (strategy == "fsdp"):
        return path
    out = run_dir / ".resume" / f"rank{os.environ.get('RANK', '0')}.ckpt"
    out.parent.mkdir(parents=True, exist_ok=True)
    if sharded:
        log.info("consolidating the sharded checkpoint %s for strategy %s", path, strategy)
        return str(write_consolidated(path, out))
    assert checkpoint is not None
    params = [(f"model.{name}", p) for _, named in groups for name, p in named]
    for state in checkpoint.get("optimizer_states", []):
        named = {params[i][0]: v for i, v in state["state"].items()}
        step = next((v["step"] for v in named.values() if "step" in v), torch.zeros(()))
        for name, p in params:  # no gradient yet: AdamW's fresh state, as it would create it
            named.setdefault(
                name,
                {
                    "step": torch.zeros_like(step),
                    "exp_avg": torch.zeros(p.shape),
                    "exp_avg_sq": torch.zeros(p.shape),
                },
            )
        state["state"] = named
        for group in state["param_groups"]:
            group["params"] = [params[i][0] for i in group["params"]]
    torch.save(checkpoint, out)
    return str(out)
