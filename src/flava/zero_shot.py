"""`python -m flava.zero_shot [config=...] [key=value ...]`: zero-shot image classification.

Each class name is put in every prompt template, the text embeddings are averaged per class,
and each image takes the class whose embedding is most similar (top-1 / top-5 reported).

Examples:
    python -m flava.zero_shot model.preset=tiny                 # embedded scenes, random tiny model
    python -m flava.zero_shot model.pretrained_model_key=runs/demo/model
    python -m flava.zero_shot model.pretrained_model_key=flava_full data.kind=image_folder \\
        data.root=/data/imagenet data.split=val                  # ImageNet names + 80 templates
    python -m flava.zero_shot data.kind=torchvision data.name=cifar10 data.root=/data
    python -m flava.zero_shot data.kind=image_folder data.root=D \\
        zero_shot.class_names=names.json zero_shot.templates=templates.json
    python -m flava.zero_shot data.kind=source data.source.path=labels.jsonl  # {"image", "label"}
Any source type with labelled images is read by data.kind=source (data.source.*: records,
image_folder, huggingface, webdataset, torchvision, ...; the named kinds are read as such
sources); class names come from the data (class folders, a ClassLabel, label strings) or
zero_shot.class_names.
An image folder is D/<split>/<class>/<image>, or D/<class>/<image> read as it is when it has
no split subfolder. Images that cannot be used are left out and counted
(`data/skipped/<reason>`); above data.max_skipped_fraction the command stops (exit 1).
Class names: the dataset's (image folders: folder names, "_" read as spaces), ImageNet's 1000
when the folder holds the 1000 WordNet-id folders (n01440764 ...), or a JSON list file.
Templates: the scenes' own for embedded data, CLIP's 80 for ImageNet, "a photo of a {}."
otherwise; or a JSON list file, or `imagenet80` / `imagenet7`.
Under torchrun (`torchrun --nproc_per_node N -m flava.zero_shot ...`) each process embeds a
share of the images and prompts and the embeddings are gathered: the metrics are one
process's; rank 0 writes them.
Writes <run.run_dir>/metrics.json. Keys: `python -m flava.zero_shot --help`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import torch

from flava.config import ZeroShotRunConfig, cli_main, describe, load_config, validate_zero_shot
from flava.data.sources.errors import DataError
from flava.data.sources.skips import skip_metrics
from flava.data.sources.torchvision_sets import EVALUATED_VALIDATION
from flava.tasks.eval_data import validator
from flava.tasks.run import (
    check_skipped,
    load_flava,
    print_table,
    processes,
    read_json_list,
    resolve_device,
    save_results,
)
from flava.tasks.zero_shot import class_names_and_templates

log = logging.getLogger("flava")
CHECKS = validator(validate_zero_shot, "zero_shot")
"""The loader's checks: the schema's values, then the data section's source."""


def load_data_and_model(cfg: ZeroShotRunConfig, device: torch.device) -> tuple[Any, Any, str, str]:
    """(the labelled split, the model, the split's name, the source type), read through the
    data section's source; external data is opened first, so it fails fast."""
    from flava.tasks.eval_data import (
        evaluation_split,
        generated,
        labelled_images,
        read_split,
        source_of,
    )

    d = cfg.data
    entry = source_of(d)
    default = "val" if d.kind != "torchvision" or d.name in EVALUATED_VALIDATION else "test"
    split = evaluation_split(d, default)
    part, is_split = read_split(entry, split)

    z = cfg.zero_shot
    names = read_json_list(z.class_names, "zero_shot.class_names") if z.class_names else []

    def data(image_size: int) -> tuple[Any, str]:
        found, own = labelled_images(d, part, image_size, "zero_shot", names=names)
        return found, (split if is_split else own) or "all"

    if not generated(entry):
        dataset, name = data(0)
        return dataset, load_flava(cfg.model, cfg.run.seed).to(device).eval(), name, entry.type
    model = load_flava(cfg.model, cfg.run.seed).to(device).eval()
    dataset, name = data(model.config.image.image_size)
    return dataset, model, name, entry.type


def run(cfg: ZeroShotRunConfig) -> dict[str, Any]:
    """Evaluate per `cfg` (under torchrun: in every process); returns the metrics."""
    with processes(resolve_device(cfg.run.device)) as device:
        return evaluate(cfg, device)


def evaluate(cfg: ZeroShotRunConfig, device: torch.device) -> dict[str, Any]:
    """The zero-shot run on `device`; returns the metrics written to metrics.json."""
    from flava.data.sources import SkipLog
    from flava.data.tokenizer import load_tokenizer
    from flava.data.transforms import image_transform
    from flava.tasks.metrics import topk_accuracy
    from flava.tasks.retrieval import embed_usable_images
    from flava.tasks.zero_shot import class_embeddings

    start = time.perf_counter()
    r, d = cfg.run, cfg.data
    data, model, split, kind = load_data_and_model(cfg, device)
    image_size = model.config.image.image_size
    names, templates = class_names_and_templates(cfg, list(data.class_names), kind)
    tokenizer = load_tokenizer()
    transform = image_transform("eval", image_size=image_size)
    skips = SkipLog()
    with torch.no_grad():
        image_emb, kept = embed_usable_images(
            model,
            lambda i: data[i].image,
            len(data),
            transform,
            skips,
            r.batch_size,
            device,
            r.progress,
        )
        labels = torch.tensor([int(data.target(i)) for i in kept], dtype=torch.long)
        classes = class_embeddings(model, tokenizer, names, templates, d.text_max_length, device)
    acc = topk_accuracy(image_emb, classes, labels, ks=list(cfg.zero_shot.topk))
    metrics: dict[str, Any] = {f"zero_shot/{k}": v for k, v in acc.items()}
    metrics.update(
        {
            "images": len(kept),
            "classes": len(names),
            "templates": len(templates),
            "split": split,
            "model": cfg.model.pretrained_model_key or f"preset {cfg.model.preset} (random init)",
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    check_skipped(cfg, metrics, skips, len(data))
    metrics.update(skip_metrics(skips.counts, len(data)))
    run_dir = save_results(cfg.run.run_dir, cfg, metrics)
    print_table(f"zero-shot classification ({d.kind}, {split}) -> {run_dir}", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad configuration or missing data)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(ZeroShotRunConfig),
        lambda a: load_config(a, ZeroShotRunConfig, CHECKS),
        run,
        stop_errors=(DataError,),
    )


if __name__ == "__main__":
    sys.exit(main())
