"""`python -m flava.linear_probe [config=...] [key=value ...]`: linear probe on frozen features.

Frozen image features (`probe.features`: `encoder_cls`, the image encoder's final-LayerNorm
CLS, which the paper probes; `projection`, the contrastive projection of it; or `mean_patch`,
the mean of the final-LayerNorm patch tokens as BEiT and MAE probe), multinomial
logistic regression with L2 fitted by full-batch L-BFGS; the L2 strength lambda is swept on a
validation split over a log grid (probe.l2_min ... l2_max, l2_points), the final probe fitted on
train + validation and its test accuracy reported. Lambda multiplies (1/2)||W||^2 added to the
*mean* cross-entropy: scikit-learn's C = 1 / (n * lambda) (see flava.tasks.linear_probe).

Examples:
    python -m flava.linear_probe model.preset=tiny            # embedded scenes, random tiny model
    python -m flava.linear_probe model.pretrained_model_key=runs/demo/model
    python -m flava.linear_probe model.pretrained_model_key=flava_full data.kind=torchvision \\
        data.name=cifar10 data.root=/data probe.val_split=null      # val held out of train
    python -m flava.linear_probe data.kind=image_folder data.root=D   # D/train, D/val, D/test
    python -m flava.linear_probe data.kind=image_folder data.root=D   # D/<class>/<image>: split
        # as it is (probe.test_fraction, then probe.val_fraction of the rest; seeded by run.seed)
    python -m flava.linear_probe data.kind=source data.source.path=labels.jsonl  # split as it is
Any source type with labelled images is read by data.kind=source (data.source.*); a type with
splits (huggingface, torchvision, embedded) gives probe.train_split / probe.val_split and the
test split (data.source.split, default probe.test_split), others are split as they are. The
named kinds are read as such sources.
Images that cannot be used are left out and counted (`data/skipped/<reason>`); above
data.max_skipped_fraction the command stops with one line (exit 1).
Writes <run.run_dir>/metrics.json. Keys: `python -m flava.linear_probe --help`.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

import torch

from flava.config import (
    LinearProbeRunConfig,
    SourceConfig,
    cli_main,
    describe,
    load_config,
    validate_linear_probe,
)
from flava.data.sources.errors import DataError
from flava.data.sources.skips import skip_metrics
from flava.tasks.eval_data import validator
from flava.tasks.run import (
    check_skipped,
    load_flava,
    print_table,
    resolve_device,
    save_results,
)

log = logging.getLogger("flava")
CHECKS = validator(validate_linear_probe, "linear_probe")
"""The loader's checks: the schema's values, then the data section's source."""


def _carve(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out): a seeded share `fraction` of range(count) held out, both sorted."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, int(round(fraction * count)))
    return sorted(order[held:]), sorted(order[:held])


def load_splits(
    cfg: LinearProbeRunConfig, image_size: int
) -> tuple[list[tuple[Any, list[int]]], list[str]]:
    """[(dataset, indices)] for train, val, test and the class names, read through the data
    section's source (`flava.tasks.eval_data`).

    Data without a training split (a folder without split subfolders, `D/<class>/<image>`; a
    records file; shards) is split as it is: a seeded `probe.test_fraction` for test, then
    `probe.val_fraction` of the rest for validation; data without the validation split has
    `probe.val_fraction` of train held out.
    """
    from flava.tasks.eval_data import (
        evaluation_split,
        labelled_images,
        need_split,
        source_of,
        split_of,
        validation_of,
    )
    from flava.tasks.task_data import TaskDataset

    d, p = cfg.data, cfg.probe

    def read(entry: SourceConfig, like: TaskDataset | None = None) -> TaskDataset:
        return labelled_images(d, entry, image_size, "linear_probe", like)[0]

    whole = source_of(d, p.train_size)
    train_part = split_of(whole, p.train_split)
    train = read(train_part if train_part is not None else whole)
    classes = list(train.class_names)
    if train_part is None:
        rest, test_idx = _carve(len(train), p.test_fraction, cfg.run.seed + 1)
        test = train
        log.info("no %s split: %d of %d images for test", p.train_split, len(test_idx), len(train))
    else:
        test_split = evaluation_split(d, None) or p.test_split
        test = read(need_split(d, source_of(d, p.test_size), test_split, "probe.test_split"), train)
        rest, test_idx = list(range(len(train))), list(range(len(test)))
    val_part = None if train_part is None else validation_of(source_of(d, p.val_size), p.val_split)
    if val_part is not None:
        val = read(val_part, train)
        return [(train, rest), (val, list(range(len(val)))), (test, test_idx)], classes
    keep, held = _carve(len(rest), p.val_fraction, cfg.run.seed)
    log.info("no validation split: holding out %d of %d training images", len(held), len(rest))
    train_idx, val_idx = [rest[i] for i in keep], [rest[i] for i in held]
    return [(train, train_idx), (train, val_idx), (test, test_idx)], classes


def run(cfg: LinearProbeRunConfig) -> dict[str, Any]:
    """Probe per `cfg`; returns the metrics written to metrics.json."""
    from flava.data.sources import SkipLog
    from flava.tasks.eval_data import generated, source_of
    from flava.tasks.linear_probe import l2_grid, sweep_and_fit

    start = time.perf_counter()
    r, p = cfg.run, cfg.probe
    device = resolve_device(r.device)
    if generated(source_of(cfg.data)):
        model = load_flava(cfg.model, r.seed).to(device).eval()
        splits, classes = load_splits(cfg, model.config.image.image_size)
    else:  # external files first: a missing dataset fails before the model loads
        splits, classes = load_splits(cfg, 0)
        model = load_flava(cfg.model, r.seed).to(device).eval()
    skips = SkipLog()
    sets = split_features(cfg, model, splits, device, skips)
    read = sum(len(indices) for _, indices in splits)
    check_skipped(cfg, {"classes": len(classes)}, skips, read)
    dtype = torch.float64 if p.dtype == "float64" else torch.float32
    grid = l2_grid(p.l2_min, p.l2_max, p.l2_points)
    train, val, test = sets
    result = sweep_and_fit(train, val, test, len(classes), grid, p.max_iter, dtype, device)
    metrics = probe_metrics(cfg, result, sets, len(classes))
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    metrics.update(skip_metrics(skips.counts, read))
    run_dir = save_results(cfg.run.run_dir, cfg, metrics)
    print_table(f"linear probe ({cfg.data.kind}, {p.features}) -> {run_dir}", metrics)
    return metrics


def _image_at(dataset: Any, indices: list[int], i: int) -> Any:
    """The image of the `i`-th of a split's examples (`indices` into `dataset`)."""
    return dataset[indices[i]].image


def split_features(
    cfg: LinearProbeRunConfig,
    model: Any,
    splits: list[tuple[Any, list[int]]],
    device: torch.device,
    skips: Any,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(features [n, D], labels [n]) per split; unusable images are left out and counted."""
    from flava.data.transforms import image_transform
    from flava.tasks.linear_probe import image_features

    r = cfg.run
    transform = image_transform("eval", image_size=model.config.image.image_size)
    sets = []
    for dataset, indices in splits:
        x, kept = image_features(
            model,
            functools.partial(_image_at, dataset, indices),
            len(indices),
            transform,
            cfg.probe.features,
            r.batch_size,
            device,
            r.progress,
            r.num_workers,
            skips,
        )
        y = torch.tensor([int(dataset.target(indices[i])) for i in kept], dtype=torch.long)
        sets.append((x, y))
    return sets


def probe_metrics(
    cfg: LinearProbeRunConfig,
    result: Any,
    sets: list[tuple[torch.Tensor, torch.Tensor]],
    classes: int,
) -> dict[str, Any]:
    """The probe's accuracies, its L2 strength, the majority baseline and the split sizes."""
    (x_train, y_train), (_, y_val), (_, y_test) = sets
    majority = int(torch.bincount(y_train, minlength=classes).argmax())
    return {
        "probe/test_accuracy": result.test_accuracy,
        "probe/val_accuracy": result.val_accuracy,
        "probe/train_accuracy": result.train_accuracy,
        "probe/l2": result.l2,
        "probe/sklearn_C": 1.0 / ((len(y_train) + len(y_val)) * result.l2),
        "baseline/majority_test_accuracy": float((y_test == majority).float().mean()),
        "features": cfg.probe.features,
        "feature_dim": int(x_train.shape[1]),
        "classes": classes,
        "train_images": len(y_train),
        "val_images": len(y_val),
        "test_images": len(y_test),
        "sweep": [{"l2": l2, "val_accuracy": acc} for l2, acc in result.sweep],
        "model": cfg.model.pretrained_model_key or f"preset {cfg.model.preset} (random init)",
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad configuration or missing data)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(LinearProbeRunConfig),
        lambda a: load_config(a, LinearProbeRunConfig, CHECKS),
        run,
        stop_errors=(DataError,),
    )


if __name__ == "__main__":
    sys.exit(main())
