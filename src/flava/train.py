"""`python -m flava.train config=PATH_OR_NAME [key=value ...]`: FLAVA pretraining.

Examples (as in the original release):
    python -m flava.train config=flava/configs/pretraining/debug.yaml \
        training.lightning.max_steps=1000
    python -m flava.train config=pretraining/demo.yaml
Keys: `python -m flava.train --help`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from flava.checkpoints.run_dir import RunDir
from flava.checkpoints.uploads import UploadError
from flava.config import RunConfig, TrainingConfig, cli_main, describe, load_config, validate
from flava.data.scenes import MAX_DISTINCT_SCENES
from flava.data.sources.errors import DataError
from flava.data.sources.skips import robust_item
from flava.objectives.kinds import IMAGE_KINDS, Kind
from flava.training.curves import plot_curves
from flava.training.logged import loss_trends, read_logged
from flava.training.resume import check_resume, resume_for_strategy
from flava.training.run import (
    Timer,
    build_trainer,
    prepare_run_dir,
    stop_with_checkpoint,
    write_metrics,
)

if TYPE_CHECKING:  # (Lightning is imported when a run starts)
    from flava.training.data import PretrainingData
    from flava.training.module import FlavaPretrainingModule

log = logging.getLogger("flava")


class TrainingStopped(RuntimeError):
    """The run stopped early (e.g. too many non-finite steps); the message says why."""


def _flatten(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def kmeans_fit_images(data: PretrainingData, count: int) -> torch.Tensor:
    """Normalised training images [count, 3, S, S] to fit the k-means MIM codebook on."""
    import numpy as np

    streams = data.streams("train")
    stream = streams.get(Kind.image) or streams.get(Kind.vl)
    if stream is None:
        raise ValueError("k-means MIM targets need image or vl training data")
    source = stream.sources[0]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(source), size=min(count, len(source)), replace=False)
    items = [robust_item(source, int(i), Kind.image, rng) for i in picks]  # bad ones replaced
    return data.val_builder.transform.batch([it.decoded_image for it in items])["pixel_values"]


def run(cfg: RunConfig) -> dict[str, Any]:
    """Train per `cfg`; returns the metrics written to metrics.json (rank 0)."""
    import lightning as L

    from flava.training.callbacks import build_evaluation
    from flava.training.data import PretrainingData
    from flava.training.factory import build_pretraining_model, fit_kmeans
    from flava.training.module import FlavaPretrainingModule
    from flava.training.sharding import full_model_state
    from flava.training.uploads import together, wait_for_uploads

    timer = Timer()
    t = cfg.training
    resume = check_before_work(cfg)
    L.seed_everything(t.seed if t.seed >= 0 else None, workers=True, verbose=False)
    run_dir = prepare_run_dir(cfg)
    module = FlavaPretrainingModule(cfg, *build_pretraining_model(cfg.model, not resume))
    data = PretrainingData(cfg, module.model.config, module.codebook_size)
    image_size = module.model.config.image.image_size
    evaluation = build_evaluation(cfg, image_size, data.tokenizer, data.val_builder.transform)
    trainer = build_trainer(cfg, run_dir, [evaluation] if evaluation else [])
    if resume:  # a sharded checkpoint for DDP, or a single file for fsdp, converted
        resume = resume_for_strategy(resume, t.lightning.strategy, module, run_dir)
    metrics: dict[str, Any] = {}
    if not resume:  # (a resumed run restores the fitted k-means codebook)
        if module.kmeans is not None and _needs_kmeans_fit(module, cfg):  # before "before" val
            images = kmeans_fit_images(data, cfg.model.kmeans_images)
            fit_kmeans(module.kmeans, images, t.seed, cfg.model.kmeans_images)
        before = trainer.validate(module, datamodule=data, verbose=False)
        metrics.update(_flatten("before", _merge(before)))
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    failed = wait_for_uploads(trainer)  # a run_dir at a URL: its checkpoints uploaded now
    counts = _counts(module)
    if module.stopped:
        raise TrainingStopped(stop_with_checkpoint(trainer, run_dir, module.stopped, counts))
    after = trainer.validate(module, datamodule=data, verbose=False)
    metrics.update(_flatten("after", _merge(after)))
    weights = full_model_state(module.model)  # every process takes part when sharded
    with together(t.upload_wait):  # the others wait for rank 0's uploads, up to upload_wait
        if trainer.is_global_zero:
            model_dir = save_model(module, run_dir, weights, t)
            metrics = finish_run(metrics, counts, trainer, run_dir, model_dir, evaluation, timer)
    if failed:  # the run is done; what the store lacks is named, with its local copy
        raise UploadError(failed[-1] + (f" (and {len(failed) - 1} more)" if failed[1:] else ""))
    return metrics


def _needs_kmeans_fit(module: FlavaPretrainingModule, cfg: RunConfig) -> bool:
    """k-means targets not read back with the model, and images to predict them for."""
    kmeans = module.kmeans
    images = IMAGE_KINDS & {Kind(k) for k in cfg.datasets.selected}
    return kmeans is not None and not bool(kmeans.fitted) and bool(images)


def check_before_work(cfg: RunConfig) -> str | None:
    """Fail in seconds on what would fail later (precision, resume file, data sources, pretrained
    weights); returns the checked resume checkpoint, if any."""
    from flava.training.data import check_sources
    from flava.training.factory import check_codebook
    from flava.training.precision import resolve_compile, resolve_precision

    resume = cfg.training.lightning_load_from_checkpoint
    resolve_precision(cfg)  # a precision the hardware lacks fails here, before any work
    if resume:  # missing, or needing more than tensors and plain containers: one line, exit 2
        resume = check_resume(resume, "training.lightning_load_from_checkpoint")
    check_sources(cfg)  # unreachable datasets fail here, in seconds, before the model is built
    check_weights(cfg.model.pretrained_model_key)  # and weights neither cached nor reachable
    check_codebook(cfg.model)  # DALL-E targets without the codebook's weights
    resolve_compile(cfg)  # logged once the checks have passed: a failed check stays one line
    return resume


def check_weights(key: str | None) -> None:
    """A pretrained key (flava_full) not in the Hugging Face cache is fetched now, or fails in
    one line (CheckpointError) when the Hub cannot be reached: before the run directory."""
    from pathlib import Path

    from flava.checkpoints.pretrained import PRETRAINED_KEYS, resolve_pretrained

    if key and key in PRETRAINED_KEYS and not Path(key).exists():
        resolve_pretrained(key)


def save_model(
    module: FlavaPretrainingModule, run_dir: RunDir, weights: dict[str, Any], t: TrainingConfig
) -> str:
    """Write the trained model (and the fitted k-means codebook) to <run_dir>/model (at a URL:
    written here, then uploaded with training.upload_retries); its location."""
    from flava.checkpoints import save_pretrained

    folder = run_dir.local("model")
    save_pretrained(module.model, folder, weights)
    if module.kmeans is not None and bool(module.kmeans.fitted):
        from flava.checkpoints.io import save_kmeans

        save_kmeans(folder, module.kmeans.state_dict())
    return run_dir.publish(folder, "model", t.upload_retries, t.upload_backoff)


def finish_run(
    metrics: dict[str, Any],
    counts: dict[str, Any],
    trainer: Any,
    run_dir: RunDir,
    model_dir: str,
    evaluation: Any,
    timer: Timer,
) -> dict[str, Any]:
    """Add the loss trends, `counts` and evaluation results to the before / after `metrics`;
    write metrics.json and curves.png, print the summary."""
    rows = read_logged(run_dir)
    metrics.update(loss_trends(rows))
    metrics.update(counts)
    if evaluation is not None:
        for when, values in evaluation.results.items():
            metrics.update(_flatten(when, values))
        metrics.update(evaluation.counts)
        metrics["eval/history"] = evaluation.history
    metrics.update(
        {"steps": trainer.global_step, "seconds": round(timer(), 1), "checkpoint": model_dir}
    )
    write_metrics(run_dir, metrics)
    plot_curves(run_dir, rows, evaluation.history if evaluation else [])
    print(summary(metrics, run_dir))
    return metrics


def _counts(module: FlavaPretrainingModule) -> dict[str, Any]:
    """Non-finite steps skipped and training samples read / skipped by reason."""
    from flava.training.counts import SkipCounter

    counts = {f"nonfinite_skipped/{k}": v for k, v in module.nonfinite.items()}
    counts.update(SkipCounter.metrics(module.data_totals()))  # every process calls it
    return counts


def _merge(results: Sequence[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        out.update({k: float(v) for k, v in r.items()})
    return out


def _cell(value: Any) -> str:
    """A number of the before / after table, or "-" where there is none."""
    return f"{value:10.4f}" if isinstance(value, float) else f"{'-':>10}"


def summary(metrics: dict[str, Any], run_dir: RunDir | str) -> str:
    """A short before/after table, then the training loss of each batch kind and objective."""
    lines = [
        f"\nFLAVA pretraining: {metrics['steps']} steps in {metrics['seconds']:.0f} s -> {run_dir}",
        f"{'metric':<42}{'before':>10}{'after':>10}",
    ]
    keys = sorted({k.split("/", 1)[1] for k in metrics if k.startswith(("before/", "after/"))})
    for key in keys:
        b, a = metrics.get(f"before/{key}"), metrics.get(f"after/{key}")
        lines.append(f"{key:<42}{_cell(b)}{_cell(a)}")
    lines.append(f"{'training (first -> last 10% of its steps)':<42}{'first':>10}{'last':>10}")
    names = [k.removeprefix("train/")[: -len("/first")] for k in metrics if k.endswith("/first")]
    for name in sorted(names, key=lambda n: ("/" not in n, n)):  # <kind>/loss, then objectives
        first, last = metrics[f"train/{name}/first"], metrics[f"train/{name}/last"]
        lines.append(f"  {name:<40}{first:10.4f}{last:10.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad configuration, 1 for a stopped run)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(RunConfig),
        lambda a: load_config(a, RunConfig, lambda c: validate(c, MAX_DISTINCT_SCENES)),
        run,
        stop_errors=(TrainingStopped, DataError, UploadError),
    )


if __name__ == "__main__":
    sys.exit(main())
