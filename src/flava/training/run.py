"""Run set-up shared by pretraining and fine-tuning: run directory, loggers, trainer; what a
run writes at its end (metrics.json, a stop checkpoint). Resume checks: `training.resume`; the
logged rows read back: `training.logged`; curves.png: `training.curves`."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import lightning as L

from flava.checkpoints.run_dir import RunDir, is_url
from flava.config import (
    ConfigError,
    FinetuneConfig,
    RunConfig,
    TrainingConfig,
    make_directory,
    to_yaml,
)
from flava.config.common import LOGGER_INSTALLS, mlflow_uri
from flava.data.sources.skips import new_run
from flava.training.uploads import checkpoint_plugins

log = logging.getLogger("flava")


def prepare_run_dir(cfg: RunConfig | FinetuneConfig) -> RunDir:
    """Create the run directory (a local folder or an fsspec URL) and save the resolved config
    as config.yaml; a new run logs each reason of a skipped sample once again."""
    new_run()
    location = cfg.training.run_dir
    if not is_url(location):
        make_directory(location, "training.run_dir")  # a file in the way: one line
    run_dir = RunDir(location)
    try:
        run_dir.create()
    except OSError as exc:
        raise ConfigError(f"training.run_dir={location!r}: cannot create it ({exc})") from None
    if int(os.environ.get("RANK", "0")) == 0:
        run_dir.write_text("config.yaml", to_yaml(cfg))
    return run_dir


def _strategy(name: str, timeout: float) -> Any:
    """Lightning strategy by name; DDP tolerates the parameters a batch kind leaves unused;
    `timeout`: seconds a collective waits for the other processes."""
    from datetime import timedelta

    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True, timeout=timedelta(seconds=timeout))
    if name == "fsdp":  # FSDP2 (fully_shard) per layer, through Lightning, on CPU and GPU
        from flava.training.sharding import ShardedStrategy

        return ShardedStrategy(timeout=timedelta(seconds=timeout))
    return name


def _logger(name: str, run_dir: RunDir, t: TrainingConfig) -> Any:
    """One Lightning logger of training.loggers: CSV and TensorBoard under <run_dir>/logs, wandb
    under <run_dir>/wandb (a local folder: for a remote run directory, the run's scratch folder
    on this machine), MLflow in training.mlflow_tracking_uri (default <run_dir>/mlflow.db)."""
    from lightning.pytorch import loggers

    if name == "csv":
        return loggers.CSVLogger(save_dir=run_dir.url(), name="logs", version="")
    if name == "tensorboard":
        return loggers.TensorBoardLogger(run_dir.url(), name="logs", version="tensorboard")
    if name == "wandb":  # WANDB_MODE=offline: an offline run under <run_dir>/wandb, no network
        finish_wandb()
        folder = str(run_dir.local("wandb").parent)
        return loggers.WandbLogger(run_dir.name, folder, project=t.logger_project)
    return loggers.MLFlowLogger(t.logger_project, run_dir.name, tracking_uri=mlflow_uri(t))


def _loggers(run_dir: RunDir, t: TrainingConfig) -> list[Any]:
    """The loggers of training.loggers, in its order (their packages were checked when the
    config was loaded; one a version Lightning refuses still fails in one line). MLflow's only
    on rank 0: its client opens the store at once, and the ranks of torchrun start together."""
    from lightning.pytorch.utilities import rank_zero_only

    names = [str(name) for name in t.loggers]
    rank = getattr(rank_zero_only, "rank", 0)  # Lightning sets it on the function
    if rank != 0:  # only rank 0 logs; the others keep csv for their callbacks
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


def build_trainer(
    cfg: RunConfig | FinetuneConfig, run_dir: RunDir, callbacks: list[L.Callback]
) -> L.Trainer:
    """A Lightning Trainer from training.lightning, with training.loggers' logs, checkpoints."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from flava.training.console import console_callbacks
    from flava.training.kernels import kernel_callbacks
    from flava.training.logged import keep_earlier_logs
    from flava.training.precision import lightning_precision, target_device

    lc, ck = cfg.training.lightning, cfg.training.lightning_checkpoint
    if cfg.training.lightning_load_from_checkpoint and int(os.environ.get("RANK", "0")) == 0:
        keep_earlier_logs(run_dir)
    loggers = _loggers(run_dir, cfg.training)
    dirpath = ck.dirpath or run_dir.url("checkpoints")
    checkpoint = ModelCheckpoint(
        dirpath=dirpath,
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
        strategy=_strategy(lc.strategy, cfg.training.process_group_timeout),
        plugins=checkpoint_plugins(dirpath, cfg.training),  # a URL: staged, uploaded behind
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
        default_root_dir=run_dir.url(),
    )


def set_host_memory(policy: str, strategy: str, on_cpu: bool) -> None:
    """Apply `training.host_memory` in this process (every process of a run builds a trainer)
    and say in the log what was done."""
    from flava.training import host_memory

    log.info("training.host_memory=%s: %s", policy, host_memory.apply(policy, strategy, on_cpu))


def stop_with_checkpoint(
    trainer: L.Trainer, run_dir: RunDir, stopped: tuple[str, str], counts: dict[str, Any]
) -> str:
    """Write `checkpoints/<stem>.ckpt` and the counts of a run that stopped early; the one-line
    reason to raise (exit status 1)."""
    from flava.training.uploads import wait_for_uploads

    stem, message = stopped
    path = run_dir.url("checkpoints", f"{stem}.ckpt")
    trainer.save_checkpoint(path)
    wait_for_uploads(trainer)  # at a URL: uploaded before the processes exit
    if trainer.is_global_zero:
        write_metrics(run_dir, counts)
    return f"{message}; checkpoint written to {path}"


def write_metrics(run_dir: RunDir, metrics: dict[str, Any]) -> None:
    """metrics.json with sorted keys."""
    run_dir.write_text("metrics.json", json.dumps(metrics, indent=2, sort_keys=True))


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
