"""`python -m flava.retrieval [config=...] [key=value ...]`: zero-shot image-text retrieval.

Every caption of every image is used: image -> text R@k counts an image as found when any of
its captions is among the k nearest texts; text -> image R@k when a caption's own image is
among the k nearest images (flava.tasks.metrics.recall_at_k).

Examples:
    python -m flava.retrieval model.preset=tiny                # embedded scenes, random tiny model
    python -m flava.retrieval model.pretrained_model_key=flava_full data.kind=coco \\
        data.root=/data/coco            # dataset_coco.json + val2014/ (Karpathy test, 5k)
    python -m flava.retrieval model.pretrained_model_key=flava_full data.kind=flickr30k \\
        data.root=/data/flickr30k       # dataset_flickr30k.json + flickr30k-images/ (test, 1k)
    python -m flava.retrieval data.kind=captions data.root=DIR   # DIR/captions.jsonl or .csv
    python -m flava.retrieval data.kind=source data.source.type=webdataset \\
        'data.source.shards=[/data/shards/val]'                 # any source with captions
Any source type with images and captions is read by data.kind=source (data.source.*: captions,
karpathy, records, huggingface, webdataset, ...); the named kinds are read as such sources.
An image that cannot be used (unreadable, truncated, SVG, no caption) is left out with its
captions and counted (`data/skipped/<reason>` in metrics.json); above
data.max_skipped_fraction of them the command stops with one line (exit 1).
Embeddings are cached in <run_dir>/cache (retrieval.cache_dir) as a .pt file keyed by the
model, the dataset and a hash of the settings, and reused by later runs.
Under torchrun (`torchrun --nproc_per_node N -m flava.retrieval ...`) each process embeds a
share of the batches and the embeddings are gathered: the metrics are one process's; rank 0
writes them.
Writes <run.run_dir>/metrics.json. Keys: `python -m flava.retrieval --help`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from flava.config import (
    RetrievalRunConfig,
    SourceConfig,
    cli_main,
    describe,
    load_config,
    validate_retrieval,
)
from flava.data.scenes import MAX_DISTINCT_SCENES
from flava.data.sources.errors import DataError
from flava.data.sources.skips import skip_metrics
from flava.tasks.eval_data import validator
from flava.tasks.run import (
    check_skipped,
    is_rank_zero,
    load_flava,
    model_tag,
    print_table,
    processes,
    rank_zero_value,
    resolve_device,
    save_results,
)

log = logging.getLogger("flava")
CHECKS = validator(partial(validate_retrieval, max_scenes=MAX_DISTINCT_SCENES), "retrieval")
"""The loader's checks: the schema's values, then the data section's source."""


def load_captioned(
    cfg: RetrievalRunConfig, entry: SourceConfig, image_size: int
) -> tuple[Any, str]:
    """(images with all their captions, the split's name) of the data section's source
    `entry` (`flava.tasks.named_kinds.source_of`)."""
    from flava.tasks.eval_data import captioned_images, evaluation_split, read_split

    split = evaluation_split(cfg.data, "test")
    part, is_split = read_split(entry, split)
    data, own = captioned_images(cfg.data, part, image_size)
    return data, (split if is_split else own) or "all"


def cache_file(
    cfg: RetrievalRunConfig, entry: SourceConfig, data: Any, split: str, image_size: int
) -> Path | None:
    """Where this model + dataset + settings' embeddings are cached (None: caching off)."""
    rc = cfg.retrieval
    if not rc.use_cache:
        return None
    directory = Path(rc.cache_dir) if rc.cache_dir else Path(cfg.run.run_dir) / "cache"
    model = model_tag(cfg.model, cfg.run.seed)
    content = hashlib.sha256()
    for i in range(len(data)):
        sample = data.sample(i)
        content.update(str(sample.image if isinstance(sample.image, str) else "").encode())
        content.update(json.dumps(sample.texts).encode())
    d = cfg.data
    source = dataclasses.asdict(entry)
    key = json.dumps(
        {
            "model": model,
            "data": [d.kind, source, d.size, split],
            "content": content.hexdigest(),
            "image_size": image_size,
            "text_max_length": cfg.data.text_max_length,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = cfg.model.pretrained_model_key or f"{cfg.model.preset}-random"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name or name)[:40]
    kind = entry.type if d.kind == "source" else d.kind
    return directory / f"{slug}-{kind}-{split}-{digest}.pt"


def _captioned_image(data: Any, index: int) -> Any:
    """The decoded image of sample `index`; BadSample when it has no caption or no usable image."""
    from flava.data.sources import BadSample, decode_image

    sample = data.sample(index)
    if not sample.texts:
        raise BadSample("empty_text", f"image {sample.key!r} has no caption")
    return decode_image(sample.image)


def embeddings(
    cfg: RetrievalRunConfig, model: Any, data: Any, device: torch.device, path: Path | None
) -> dict[str, Any]:
    """Image and caption embeddings, caption -> image, skip counts, whether the cache was used."""
    from flava.data.sources import SkipLog
    from flava.data.tokenizer import load_tokenizer
    from flava.data.transforms import image_transform
    from flava.tasks.retrieval import embed_texts, embed_usable_images

    if path is not None and rank_zero_value(path.is_file()):  # every process takes one branch
        saved = torch.load(path, map_location="cpu", weights_only=True)
        log.info("reusing cached embeddings %s", path)
        return {**saved, "cached": True}
    r = cfg.run
    transform = image_transform("eval", image_size=model.config.image.image_size)
    skips = SkipLog()
    image_emb, kept = embed_usable_images(
        model,
        lambda i: _captioned_image(data, i),
        len(data),
        transform,
        skips,
        r.batch_size,
        device,
        r.progress,
    )
    captions = [data.sample(i).texts for i in kept]
    texts = [c for caps in captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], dtype=torch.long)
    with torch.no_grad():
        text_emb = embed_texts(
            model,
            load_tokenizer(),
            texts,
            4 * r.batch_size,
            cfg.data.text_max_length,
            device,
            r.progress,
        )
    out = {"images": image_emb, "texts": text_emb, "text_to_image": owner, "skipped": skips.counts}
    if path is not None and is_rank_zero():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v for k, v in out.items()}, path)
        log.info("cached embeddings in %s", path)
    return {**out, "cached": False}


def run(cfg: RetrievalRunConfig) -> dict[str, Any]:
    """Evaluate per `cfg` (under torchrun: in every process); returns the metrics."""
    with processes(resolve_device(cfg.run.device)) as device:
        return evaluate(cfg, device)


def evaluate(cfg: RetrievalRunConfig, device: torch.device) -> dict[str, Any]:
    """The retrieval run on `device`; returns the metrics written to metrics.json."""
    from flava.data.sources import SkipLog
    from flava.tasks.eval_data import generated, source_of
    from flava.tasks.metrics import recall_at_k

    start = time.perf_counter()
    entry = source_of(cfg.data)
    if generated(entry):
        model = load_flava(cfg.model, cfg.run.seed).to(device).eval()
        data, split = load_captioned(cfg, entry, model.config.image.image_size)
    else:  # external files first: a missing file fails before the model loads
        data, split = load_captioned(cfg, entry, 0)
        model = load_flava(cfg.model, cfg.run.seed).to(device).eval()
    image_size = model.config.image.image_size
    path = cache_file(cfg, entry, data, split, image_size)
    found = embeddings(cfg, model, data, device, path)
    image_emb, text_emb, owner = found["images"], found["texts"], found["text_to_image"]
    skips = SkipLog()
    skips.counts = dict(found["skipped"])
    recall = recall_at_k(image_emb, text_emb, owner, ks=list(cfg.retrieval.ks))
    order = sorted(recall, key=lambda key: (key.split("/")[0], int(key.split("@")[1])))
    metrics: dict[str, Any] = {f"retrieval/{key}": recall[key] for key in order}
    metrics.update(
        {
            "images": len(image_emb),
            "captions": int(owner.numel()),
            "split": split,
            "model": cfg.model.pretrained_model_key or f"preset {cfg.model.preset} (random init)",
            "cache": str(path) if path else None,
            "cache_hit": found["cached"],
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    check_skipped(cfg, metrics, skips, len(data))
    metrics.update(skip_metrics(skips.counts, len(data)))
    run_dir = save_results(cfg.run.run_dir, cfg, metrics)
    print_table(f"retrieval ({cfg.data.kind}, {split}, every caption) -> {run_dir}", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad configuration or missing data)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(RetrievalRunConfig),
        lambda a: load_config(a, RetrievalRunConfig, CHECKS),
        run,
        stop_errors=(DataError,),
    )


if __name__ == "__main__":
    sys.exit(main())
