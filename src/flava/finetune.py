"""`python -m flava.finetune config=PATH_OR_NAME [key=value ...]`: fine-tune FLAVA on a task.

Examples:
    python -m flava.finetune config=finetuning/embedded_image.yaml      # offline, tiny, CPU
    python -m flava.finetune config=finetuning/mnli.yaml training.lightning.devices=4
    python -m flava.finetune config=finetuning/vqa.yaml data.root=/data/vqa
Writes <run_dir>/metrics.json, config.yaml, logs/, checkpoints/ (last.ckpt, best-*.ckpt) and
model/ (the best checkpoint: FlavaModel.from_pretrained-loadable + head.safetensors +
task.json). Keys: `python -m flava.finetune --help`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flava.checkpoints.finetuned import checkpoint_image_size, save_finetuned
from flava.checkpoints.run_dir import RunDir, fetch
from flava.checkpoints.uploads import UploadError
from flava.config import FinetuneConfig, cli_main, describe, load_config
from flava.data.sources.errors import DataError
from flava.model.classifier import FlavaClassifier
from flava.tasks.finetuning import build_datasets, check_task, validate_config
from flava.tasks.run import load_flava

log = logging.getLogger("flava")


@dataclass
class FinetuneRun:
    """What set-up builds for one run: the data, the LightningModule and its Trainer."""

    cfg: FinetuneConfig
    train: Any
    vals: list[tuple[str, Any]]
    class_names: list[str]
    module: Any
    data: Any
    trainer: Any
    best: Any
    run_dir: RunDir
    resume: str | None = None
    """The checkpoint to resume from (a remote one's local copy)."""
    failed: list[str] = field(default_factory=list)
    """One-line reasons of checkpoints whose upload to a URL run_dir failed."""


# ---------------------------------------------------------------------------------------------
# set-up


def build_classifier(cfg: FinetuneConfig, num_outputs: int, seed: int = 0) -> FlavaClassifier:
    """The backbone (pretrained or preset, seeded) with a fresh head."""
    m = cfg.model
    flava = load_flava(m, seed)
    if m.activation_checkpointing:
        for enc in (flava.image_encoder, flava.text_encoder, flava.multimodal_encoder):
            enc.set_activation_checkpointing(True)
    h = m.head
    return FlavaClassifier(
        flava, cfg.task.modality, num_outputs, h.hidden_size, h.activation, h.dropout, h.pooling
    )


def _image_size(cfg: FinetuneConfig) -> int:
    """The backbone's image size without building it (our / transformers config.json)."""
    from flava.model.presets import preset

    key = cfg.model.pretrained_model_key
    if key:
        return checkpoint_image_size(key) or 224  # a pretrained key: flava_full
    return preset(cfg.model.preset).image.image_size


def _data_module(
    cfg: FinetuneConfig, train: Any, vals: list[tuple[str, Any]], outputs: int, image_size: int
) -> Any:
    """Training batches (augmented when data.augment) and the validation loaders."""
    from flava.data.tokenizer import load_tokenizer
    from flava.data.transforms import ImageTransform, image_transform
    from flava.training.finetune_data import Collator, FinetuneData

    d, k = cfg.data, cfg.task
    tokenizer = load_tokenizer()

    def collator(transform: ImageTransform) -> Collator:
        return Collator(k.modality, k.type, outputs, tokenizer, transform, d.text_max_length)

    eval_tf = image_transform("eval", image_size=image_size)
    scale = (d.crop_scale[0], d.crop_scale[1])
    train_tf = (
        image_transform("pretrain", image_size, scale=scale, hflip=d.hflip)
        if d.augment
        else eval_tf
    )
    return FinetuneData(cfg, train, vals, collator(train_tf), collator(eval_tf))


def _best_checkpoint(cfg: FinetuneConfig, run_dir: RunDir) -> Any:
    """The callback keeping the checkpoint with the best task.monitor value."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    t, monitor = cfg.training, monitor_of(cfg)
    return ModelCheckpoint(
        dirpath=t.lightning_checkpoint.dirpath or run_dir.url("checkpoints"),
        filename="best-{step}",
        monitor=f"val/{monitor}",
        mode="min" if monitor == "loss" else "max",
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=False,
    )


def monitor_of(cfg: FinetuneConfig) -> str:
    """The validation metric that picks the best checkpoint (task.monitor or the first)."""
    return cfg.task.monitor or cfg.task.metrics[0]


def setup(cfg: FinetuneConfig) -> FinetuneRun:
    """Datasets (failing fast, before any model), the seeded classifier, data and Trainer."""
    import lightning as L

    from flava.checkpoints import CheckpointError
    from flava.training.finetune_module import FinetuneModule
    from flava.training.optim import param_groups
    from flava.training.resume import check_group_layout
    from flava.training.run import build_trainer, prepare_run_dir

    t = cfg.training
    check_task(cfg)
    resume = t.lightning_load_from_checkpoint
    if resume:  # a remote one (an fsspec URL) is read from a local copy
        resume = fetch(resume)
    if resume and not Path(resume).exists():
        raise CheckpointError(f"training.lightning_load_from_checkpoint: {resume}: no such file")
    train, vals, class_names, outputs = build_datasets(cfg, _image_size(cfg))
    seed = L.seed_everything(t.seed if t.seed >= 0 else None, workers=True, verbose=False)
    model = build_classifier(cfg, outputs, seed)
    lc = t.lightning
    if lc.val_check_interval is None:  # validate (and pick the best) at the end of training
        steps = lc.max_steps if lc.max_steps and lc.max_steps > 0 else 1000
        lc.val_check_interval = steps * lc.accumulate_grad_batches
    run_dir = prepare_run_dir(cfg)
    image_size = model.flava.config.image.image_size
    data = _data_module(cfg, train, vals, outputs, image_size)
    module = FinetuneModule(cfg, model, [p for p, _ in vals])
    if resume:  # unsafe, or saved with other lr_multipliers: one line before any work
        check_group_layout(resume, param_groups(model.named_parameters(), t))
    best = _best_checkpoint(cfg, run_dir)
    trainer = build_trainer(cfg, run_dir, [best])
    return FinetuneRun(cfg, train, vals, class_names, module, data, trainer, best, run_dir, resume)


# ---------------------------------------------------------------------------------------------
# fit -> validate -> report


def fit(r: FinetuneRun) -> dict[str, Any]:
    """Train; returns the data counts (a data-quality stop raises `DataError` with a checkpoint)."""
    from flava.training.counts import SkipCounter
    from flava.training.run import stop_with_checkpoint
    from flava.training.uploads import wait_for_uploads

    r.trainer.fit(r.module, datamodule=r.data, ckpt_path=r.resume)
    r.failed = wait_for_uploads(r.trainer)  # a run_dir at a URL: its checkpoints uploaded now
    counts = SkipCounter.metrics(r.module.counter.totals(r.module))  # every process calls it
    if r.module.stopped:
        raise DataError(stop_with_checkpoint(r.trainer, r.run_dir, r.module.stopped, counts))
    return counts


def _validated(r: FinetuneRun, ckpt_path: str | None = None) -> dict[str, float]:
    """The scalar validation metrics of the current weights (or of `ckpt_path`'s)."""
    import torch

    trainer = r.trainer
    trainer.validate(
        r.module, datamodule=r.data, verbose=False, ckpt_path=ckpt_path, weights_only=True
    )
    return {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("val") and torch.as_tensor(v).numel() == 1
    }


def validate(r: FinetuneRun) -> dict[str, Any]:
    """final/ metrics of the last weights and best/ of the best checkpoint (loaded last)."""
    from flava.checkpoints.io import read_checkpoint

    final = _validated(r)
    best_path = r.best.best_model_path
    best_step = r.trainer.global_step
    best = final
    if best_path:
        best_step = int(read_checkpoint(fetch(best_path))["global_step"])
        if best_step != r.trainer.global_step:
            best = _validated(r, ckpt_path=best_path)
    metrics: dict[str, Any] = {f"final/{key}": v for key, v in final.items()}
    metrics.update({f"best/{key}": v for key, v in best.items()})
    metrics.update({"best_step": best_step, "best_checkpoint": best_path or None})
    return metrics


def report(r: FinetuneRun, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Save model/ (the best weights), write metrics.json and print the summary (rank 0)."""
    from flava.training.logged import loss_trends, read_logged
    from flava.training.run import write_metrics

    k, module = r.cfg.task, r.module
    extra = {"task": k.name, "type": k.type, "class_names": r.class_names}
    folder = r.run_dir.local("model")
    save_finetuned(module.model, folder, extra)
    t = r.cfg.training
    model_dir = r.run_dir.publish(folder, "model", t.upload_retries, t.upload_backoff)
    metrics.update(loss_trends(read_logged(r.run_dir)))
    metrics.update({f"data/val_skipped/{n}": c for n, c in sorted(module.val_skipped.items())})
    metrics.update(
        {
            "task": k.name,
            "steps": r.trainer.global_step,
            "monitor": f"val/{monitor_of(r.cfg)}",
            "seconds": round(seconds, 1),
            "model": model_dir,
            "train_examples": len(r.train),
            "val_examples": {p: len(ds) for p, ds in r.vals},
        }
    )
    write_metrics(r.run_dir, metrics)
    print(summary(metrics, r.run_dir))
    return metrics


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune per `cfg`; returns the metrics written to metrics.json (rank 0)."""
    from flava.tasks.metrics import majority_baseline
    from flava.training.run import Timer
    from flava.training.uploads import together

    timer = Timer()
    r = setup(cfg)
    log.info("majority baseline ...")
    baseline = majority_baseline(r.train, r.vals, cfg.task.type)
    counts = fit(r)
    metrics = validate(r)
    metrics.update({f"baseline/majority/{key}": v for key, v in baseline.items()})
    with together(cfg.training.upload_wait):  # the others wait for rank 0's uploads
        if r.trainer.is_global_zero:
            metrics.update(counts)
            metrics = report(r, metrics, timer())
    if r.failed:  # the run is done; what the store lacks is named, with its local copy
        extra = f" (and {len(r.failed) - 1} more)" if r.failed[1:] else ""
        raise UploadError(r.failed[-1] + extra)
    return metrics


def summary(metrics: dict[str, Any], run_dir: RunDir | str) -> str:
    """A table: metric | majority baseline | final | best; then the training loss trend."""
    lines = [
        f"\nFLAVA fine-tuning {metrics['task']}: {metrics['steps']} steps in "
        f"{metrics['seconds']:.0f} s (best at step {metrics['best_step']}) -> {run_dir}",
        f"{'metric':<36}{'majority':>10}{'final':>10}{'best':>10}",
    ]
    keys = sorted({key.split("/", 1)[1] for key in metrics if key.startswith(("final/", "best/"))})
    for key in keys:
        values = [metrics.get(f"{p}/{key}") for p in ("baseline/majority", "final", "best")]
        cells = "".join(f"{v:10.4f}" if isinstance(v, float) else f"{'-':>10}" for v in values)
        lines.append(f"{key:<36}{cells}")
    trends = sorted(k[len("train/") : -len("/first")] for k in metrics if k.endswith("/first"))
    if trends:
        lines.append(f"{'training (first -> last 10%)':<46}{'first':>10}{'last':>10}")
    for name in trends:
        first, last = metrics[f"train/{name}/first"], metrics[f"train/{name}/last"]
        lines.append(f"  train/{name:<38}{first:10.4f}{last:10.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the command


def _run(cfg: FinetuneConfig) -> object:
    from flava.training.precision import resolve_precision
    from flava.training.resume import check_resume

    resolve_precision(cfg)  # a precision the hardware lacks fails here, before any work
    resume = cfg.training.lightning_load_from_checkpoint
    if resume:  # missing, or needing more than tensors and plain containers: one line, exit 2
        check_resume(resume, "training.lightning_load_from_checkpoint")  # a URL: read a copy
    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad configuration or missing data)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(FinetuneConfig),
        lambda a: load_config(a, FinetuneConfig, validate_config),
        _run,
        stop_errors=(DataError, UploadError),
    )


if __name__ == "__main__":
    sys.exit(main())
