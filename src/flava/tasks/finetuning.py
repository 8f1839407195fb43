"""Fine-tuning FLAVA (paper section 5): a 2-layer MLP head on the relevant encoder's pooled CLS.

Text tasks use the text encoder (sentence pairs as "[CLS] a [SEP] b [SEP]" with token types 0 /
1), image tasks the image encoder, multimodal tasks the multimodal encoder over the fused image
and text states. Classification trains with cross-entropy, regression (STS-B) with one output
and MSE, VQA with binary cross-entropy against soft answer scores min(#humans / 3, 1).
`run(cfg)` is the whole Lightning run behind `python -m flava.finetune`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torchmetrics
from omegaconf import DictConfig
from torch import nn

from flava.config import ConfigError
from flava.model.flava import FlavaModel
from flava.model.transformer import activation
from flava.tasks.task_data import (
    DatasetUnavailable,
    SceneTask,
    TaskDataset,
    answer_vocabulary,
    glue_dataset,
    hateful_memes_task,
    image_folder_task,
    read_vqa,
    snli_ve_task,
    torchvision_task,
    vqa_task,
)

log = logging.getLogger("flava")

# ---------------------------------------------------------------------------------------------
# metrics


class VQAAccuracy(torchmetrics.Metric):
    """VQA soft accuracy: mean of min(#humans who gave the predicted answer / 3, 1)."""

    # update(preds, target): preds are logits [B, A] (argmax taken) or answer indices [B]; target
    # holds each answer's soft score [B, A] (0 for answers no human gave).

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "score", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions and soft answer scores."""
        index = preds.argmax(dim=-1) if preds.ndim == 2 else preds
        picked = target.gather(1, index.long()[:, None]).squeeze(1).clamp(max=1.0)
        self.score += picked.double().sum()
        self.total += picked.numel()

    def compute(self) -> torch.Tensor:
        """Mean soft accuracy in [0, 1]."""
        return (self.score / self.total.clamp(min=1)).float()


class TaskMetrics(nn.Module):
    """The task's torchmetrics fed from model outputs: logits [B, C] (regression: [B, 1])."""

    def __init__(self, names: list[str], task_type: str, num_outputs: int) -> None:
        super().__init__()
        self.task_type, self.num_outputs = task_type, num_outputs
        self.metrics = nn.ModuleDict({n: self._build(n) for n in names})

    def _build(self, name: str) -> torchmetrics.Metric:
        c = self.num_outputs
        binary = c == 2
        tm = torchmetrics.classification
        if name == "accuracy":
            return tm.MulticlassAccuracy(num_classes=c, average="micro")
        if name == "f1":
            return tm.BinaryF1Score() if binary else tm.MulticlassF1Score(c, average="macro")
        if name == "mcc":
            return tm.BinaryMatthewsCorrCoef() if binary else tm.MulticlassMatthewsCorrCoef(c)
        if name == "auroc":
            return tm.BinaryAUROC() if binary else tm.MulticlassAUROC(c)
        if name == "pearson":
            return torchmetrics.PearsonCorrCoef()
        if name == "spearman":
            return torchmetrics.SpearmanCorrCoef()
        if name == "vqa_accuracy":
            return VQAAccuracy()
        raise ValueError(f"unknown metric {name!r}")

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch."""
        logits = logits.float()
        if self.task_type == "regression":
            for m in self.metrics.values():
                m.update(logits[:, 0], targets.float())
            return
        if self.task_type == "vqa":
            for m in self.metrics.values():
                m.update(logits, targets.float())
            return
        probs = logits.softmax(dim=-1)
        preds = probs.argmax(dim=-1)
        for name, m in self.metrics.items():
            if name == "accuracy" or (name in ("f1", "mcc") and self.num_outputs != 2):
                m.update(preds, targets)
            elif name == "auroc" and self.num_outputs != 2:
                m.update(probs, targets)
            else:  # binary f1 / mcc / auroc on the positive class probability
                m.update(probs[:, 1], targets)

    def compute(self) -> dict[str, float]:
        """{metric name: value}."""
        return {name: float(m.compute()) for name, m in self.metrics.items()}

    def reset(self) -> None:
        """Clear the accumulated state."""
        for m in self.metrics.values():
            m.reset()


# ---------------------------------------------------------------------------------------------
# model


class FlavaClassifier(nn.Module):
    """FlavaModel + MLP head (Linear(D, 1536), activation, dropout, Linear(1536, outputs))."""

    def __init__(
        self,
        flava: FlavaModel,
        modality: str,
        num_outputs: int,
        hidden_size: int = 1536,
        act: str = "gelu",
        dropout: float = 0.1,
        pooling: str = "pooler",
    ) -> None:
        super().__init__()
        if modality not in ("text", "image", "multimodal"):
            raise ValueError(f"modality must be text, image or multimodal, got {modality!r}")
        self.flava, self.modality, self.pooling = flava, modality, pooling
        self.settings = dict(
            modality=modality,
            num_outputs=num_outputs,
            hidden_size=hidden_size,
            act=act,
            dropout=dropout,
            pooling=pooling,
        )
        width = self.encoder.config.hidden_size
        self.head = nn.Sequential(
            nn.Linear(width, hidden_size),
            activation(act),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_outputs),
        )
        std = flava.config.initializer_range
        for layer in (self.head[0], self.head[3]):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        self._freeze_unused()

    @property
    def encoder(self) -> nn.Module:
        """The encoder whose CLS the head reads."""
        f = self.flava
        return {
            "text": f.text_encoder,
            "image": f.image_encoder,
            "multimodal": f.multimodal_encoder,
        }[self.modality]

    def _freeze_unused(self) -> None:
        """Parameters the task never reaches get no gradient (and no optimiser state)."""
        f = self.flava
        used: list[nn.Module] = [self.encoder]
        if self.modality == "multimodal":
            used += [f.image_encoder, f.text_encoder, f.image_to_mm_projection]
            used.append(f.text_to_mm_projection)
        f.requires_grad_(False)
        for module in used:
            module.requires_grad_(True)
        for enc in (f.image_encoder, f.text_encoder, f.multimodal_encoder):
            if enc is not self.encoder or self.pooling != "pooler":
                enc.pooler.requires_grad_(False)

    def features(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The pooled CLS [B, D] the head reads."""
        f = self.flava
        if self.modality == "text":
            out = f.text_encoder(input_ids, attention_mask, token_type_ids)
        elif self.modality == "image":
            out = f.image_encoder(pixel_values)
        else:
            image = f.image_encoder(pixel_values)
            text = f.text_encoder(input_ids, attention_mask, token_type_ids)
            out = f.fuse(image, text, attention_mask)
        states = out.last_hidden_state
        return self.encoder.pooler(states) if self.pooling == "pooler" else states[:, 0]

    def forward(self, **inputs: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, outputs] from pixel_values / input_ids / attention_mask / token_type_ids."""
        return self.head(self.features(**inputs))

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """FlavaModel dir (from_pretrained-loadable) + head.safetensors + task.json."""
        from flava.checkpoints.io import save_weights, write_json

        out = Path(directory)
        self.flava.save_pretrained(out)
        save_weights(out / "head.safetensors", self.head.state_dict())
        write_json(out / "task.json", {**self.settings, **(extra or {})})


def load_finetuned(directory: str | Path) -> tuple[FlavaClassifier, dict[str, Any]]:
    """A fine-tuned classifier saved by a run (its model/ directory) and its task.json."""
    from safetensors.torch import load_file

    from flava.checkpoints.io import read_json

    directory = Path(directory)
    info = read_json(directory / "task.json")
    keys = ("modality", "num_outputs", "hidden_size", "act", "dropout", "pooling")
    model = FlavaClassifier(FlavaModel.from_pretrained(directory), **{k: info[k] for k in keys})
    model.head.load_state_dict(load_file(str(directory / "head.safetensors")))
    return model, info


# ---------------------------------------------------------------------------------------------
# data


def expected_task(d: DictConfig) -> tuple[str | None, str | None]:
    """(modality, task type) a dataset kind calls for (None: either)."""
    if d.kind == "embedded":
        name = d.name or "image"
        return {
            "image": ("image", "classification"),
            "pair": ("text", "classification"),
            "vqa": ("multimodal", "vqa"),
        }.get(name, (None, None))
    if d.kind == "glue":
        return "text", "regression" if d.name == "stsb" else "classification"
    if d.kind in ("torchvision", "image_folder"):
        return "image", "classification"
    if d.kind == "vqa":
        return "multimodal", "vqa"
    if d.kind == "source":
        return None, None
    return "multimodal", "classification"


def check_task(cfg: DictConfig) -> None:
    """The task section must fit the dataset (one-line ConfigError otherwise)."""
    modality, kind = expected_task(cfg.data)
    what = f"data.kind={cfg.data.kind}" + (f" data.name={cfg.data.name}" if cfg.data.name else "")
    if modality is not None and cfg.task.modality != modality:
        raise ConfigError(f"task.modality={cfg.task.modality!r} is invalid: {what} is {modality}")
    if kind is not None and cfg.task.type != kind:
        raise ConfigError(f"task.type={cfg.task.type!r} is invalid: {what} needs {kind}")


def _split_prefixes(d: DictConfig) -> list[str]:
    prefixes = ["val"]
    for split in list(d.val)[1:]:
        prefixes.append(f"val_{split.label or split.name}")
    if len(set(prefixes)) != len(prefixes):
        raise ConfigError("data.val: give each extra validation split a distinct label")
    return prefixes


NEEDS = {"text": ("text",), "image": ("image",), "multimodal": ("image", "text")}


def _source_sets(cfg: DictConfig, splits: list[Any]) -> list[Any]:
    """data.kind=source: each split read through the configured source; labels named by the
    training split (validation splits use its classes)."""
    from omegaconf import OmegaConf

    from flava.tasks.task_data import build_source, source_task

    d, k = cfg.data, cfg.task
    sets: list[Any] = []
    for n, split in enumerate(splits):
        entry = OmegaConf.merge(d.source, {"split": d.source.split or split.name})
        if n and not split.path and d.source.type != "huggingface":
            raise ConfigError(
                f"data.val[{n - 1}] would read the training data again ({d.source.type} splits "
                "are files): give it path: (e.g. 'data.val=[{path: val.jsonl}]') or set "
                "data.val_fraction=0.2"
            )
        if split.path:
            entry.path, entry.shards = split.path, []
        if entry.type == "image_folder" and sets:
            entry.classes = list(sets[0].folder_classes or [])
        try:
            source = build_source(entry, "train" if n == 0 else "val")
        except ConfigError as exc:
            raise type(exc)(
                f"data.source ({entry.type} {entry.path or entry.key}): {exc}"
            ) from None
        space = sets[0].space if sets else None
        sets.append(source_task(source, NEEDS[k.modality], k.type, split.size, space))
    return sets


def _carve_validation(cfg: DictConfig, train: Any) -> tuple[Any, Any]:
    """(train, val): a seeded share data.val_fraction of the training set held out."""
    import numpy as np

    order = np.random.default_rng([cfg.training.seed, 0x7A1]).permutation(len(train))
    held = max(1, int(round(cfg.data.val_fraction * len(train))))
    if held >= len(train):
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} leaves no training data")
    log.info("data.val_fraction: %d of %d examples held out for validation", held, len(train))
    return train.subset(sorted(order[held:].tolist())), train.subset(sorted(order[:held].tolist()))


def build_datasets(
    cfg: DictConfig, image_size: int
) -> tuple[Any, list[tuple[str, Any]], list[str], int]:
    """(train set, [(metric prefix, validation set)], class names / answers, outputs)."""
    d = cfg.data
    carve = d.val_fraction > 0
    splits = [d.train] if carve else [d.train, *d.val]
    prefixes = ["val"] if carve else _split_prefixes(d)
    if d.kind == "source":
        sets = _source_sets(cfg, splits)
    elif d.kind == "embedded":
        sets = [
            SceneTask(d.name or "image", s.name, s.size or 512, image_size, s.seed) for s in splits
        ]
    elif d.kind == "glue":
        if not d.name:
            raise ConfigError("data.name is required for glue data (e.g. mnli)")
        sets = [glue_dataset(d.name, s.name, s.size, d.hf_path, d.cache_dir) for s in splits]
    elif d.kind == "torchvision":
        sets = [torchvision_task(d.name, d.root, s.name, s.size, d.download) for s in splits]
    elif d.kind == "image_folder":
        train = image_folder_task(d.root, d.train.name, None, d.train.size)
        sets = [train] + [
            image_folder_task(d.root, s.name, train.class_names, s.size) for s in splits[1:]
        ]
    elif d.kind == "vqa":
        rows = [read_vqa(d.root, dict(s.files)) for s in splits]
        vocab = answer_vocabulary([r[2] for r in rows[0]], d.answer_vocab_size)
        sets = [vqa_task(r, vocab, s.size) for r, s in zip(rows, splits, strict=True)]
    elif d.kind == "snli_ve":
        sets = [snli_ve_task(d.root, dict(s.files), s.size) for s in splits]
    elif d.kind == "hateful_memes":
        sets = [hateful_memes_task(d.root, dict(s.files), s.size) for s in splits]
    else:  # pragma: no cover - validated before
        raise ConfigError(f"data.kind={d.kind!r} is invalid")
    train, vals = sets[0], sets[1:]
    if carve:
        train, val = _carve_validation(cfg, train)
        vals = [val]
    outputs = train.num_outputs
    if cfg.task.type == "regression" and outputs != 1:
        raise ConfigError(f"task.type=regression needs a regression dataset ({outputs} classes)")
    return train, list(zip(prefixes, vals, strict=True)), list(train.class_names), outputs


def majority_baseline(
    train: Any, vals: list[tuple[str, Any]], task_type: str, limit: int = 8192
) -> dict[str, float]:
    """Accuracy (VQA: soft accuracy) of always giving the most frequent training target."""
    # the most frequent target is counted over the first `limit` training examples
    if task_type == "regression" or len(train) == 0:
        return {}
    n = min(len(train), limit)
    if task_type == "vqa":
        counts: Counter[int] = Counter()
        for i in range(n):
            scores = train.target(i)
            if scores:
                counts[max(scores, key=scores.get)] += 1
        if not counts:
            return {}
        top = counts.most_common(1)[0][0]
        score = lambda t: float(t.get(top, 0.0))  # noqa: E731
        name = "vqa_accuracy"
    else:
        top = Counter(int(train.target(i)) for i in range(n)).most_common(1)[0][0]
        score = lambda t: float(int(t) == top)  # noqa: E731
        name = "accuracy"
    out = {}
    for prefix, ds in vals:
        if len(ds):
            out[f"{prefix}/{name}"] = sum(score(ds.target(i)) for i in range(len(ds))) / len(ds)
    return out


# ---------------------------------------------------------------------------------------------
# the run


def build_classifier(cfg: DictConfig, num_outputs: int, seed: int = 0) -> FlavaClassifier:
    """The backbone (pretrained or preset, seeded) with a fresh head."""
    from flava.tasks.eval_config import load_flava

    m = cfg.model
    flava = load_flava(m, seed)
    if m.activation_checkpointing:
        for enc in (flava.image_encoder, flava.text_encoder, flava.multimodal_encoder):
            enc.set_activation_checkpointing(True)
    h = m.head
    return FlavaClassifier(
        flava, cfg.task.modality, num_outputs, h.hidden_size, h.activation, h.dropout, h.pooling
    )


def _validated(trainer: Any, module: Any, data: Any, ckpt_path: str | None = None) -> dict:
    trainer.validate(module, datamodule=data, verbose=False, ckpt_path=ckpt_path, weights_only=True)
    return {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("val") and torch.as_tensor(v).numel() == 1
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune per `cfg`; returns the metrics written to metrics.json (rank 0)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from flava.checkpoints import CheckpointError
    from flava.data.tokenizer import load_tokenizer
    from flava.training.counts import SkipCounter
    from flava.training.finetune_module import Collator, FinetuneData, FinetuneModule
    from flava.training.run import (
        Timer,
        build_trainer,
        loss_trends,
        prepare_run_dir,
        read_logged,
        stop_with_checkpoint,
        write_metrics,
    )

    timer = Timer()
    t, k = cfg.training, cfg.task
    check_task(cfg)
    resume = t.lightning_load_from_checkpoint
    if resume and not Path(resume).exists():
        raise CheckpointError(f"training.lightning_load_from_checkpoint: {resume}: no such file")
    image_size = _image_size(cfg)
    train, vals, class_names, outputs = build_datasets(cfg, image_size)  # fails fast, no model
    seed = L.seed_everything(t.seed if t.seed >= 0 else None, workers=True, verbose=False)
    model = build_classifier(cfg, outputs, seed)
    image_size = model.flava.config.image.image_size
    lc = t.lightning
    if lc.val_check_interval is None:  # validate (and pick the best) at the end of training
        steps = lc.max_steps if lc.max_steps and lc.max_steps > 0 else 1000
        lc.val_check_interval = steps * lc.accumulate_grad_batches
    run_dir = prepare_run_dir(cfg)
    tokenizer = load_tokenizer()
    d = cfg.data
    collate = dict(
        modality=k.modality,
        task_type=k.type,
        num_outputs=outputs,
        tokenizer=tokenizer,
        max_length=d.text_max_length,
    )
    from flava.data.transforms import image_transform

    eval_tf = image_transform("eval", image_size=image_size)
    train_tf = (
        image_transform("pretrain", image_size, scale=tuple(d.crop_scale), hflip=d.hflip)
        if d.augment
        else eval_tf
    )
    data = FinetuneData(
        cfg,
        train,
        vals,
        Collator(transform=train_tf, **collate),
        Collator(transform=eval_tf, **collate),
    )
    module = FinetuneModule(cfg, model, [p for p, _ in vals])
    monitor = k.monitor or k.metrics[0]
    best_cb = ModelCheckpoint(
        dirpath=t.lightning_checkpoint.dirpath or str(run_dir / "checkpoints"),
        filename="best-{step}",
        monitor=f"val/{monitor}",
        mode="min" if monitor == "loss" else "max",
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=False,
    )
    trainer = build_trainer(cfg, run_dir, [best_cb])
    log.info("majority baseline ...")
    baseline = majority_baseline(train, vals, k.type)
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    counts = SkipCounter.metrics(module.counter.totals(module))  # every process calls it
    if module.stopped:
        from flava.data.sources.base import DataError

        raise DataError(stop_with_checkpoint(trainer, run_dir, module.stopped, counts))
    final = _validated(trainer, module, data)
    best_path = best_cb.best_model_path
    best_step = trainer.global_step
    best = final
    if best_path:
        from flava.checkpoints.io import read_checkpoint

        best_step = int(read_checkpoint(best_path)["global_step"])
        if best_step != trainer.global_step:
            best = _validated(trainer, module, data, ckpt_path=best_path)
    metrics: dict[str, Any] = {f"final/{key}": v for key, v in final.items()}
    metrics.update({f"best/{key}": v for key, v in best.items()})
    metrics.update({f"baseline/majority/{key}": v for key, v in baseline.items()})
    if not trainer.is_global_zero:
        return metrics
    model_dir = run_dir / "model"
    extra = {"task": k.name, "type": k.type, "class_names": class_names}
    module.model.save(model_dir, extra)  # the best checkpoint's weights
    metrics.update(loss_trends(read_logged(run_dir)))
    metrics.update(counts)
    metrics.update({f"data/val_skipped/{r}": n for r, n in sorted(module.val_skipped.items())})
    metrics.update(
        {
            "task": k.name,
            "steps": trainer.global_step,
            "best_step": best_step,
            "best_checkpoint": best_path or None,
            "monitor": f"val/{monitor}",
            "seconds": round(timer(), 1),
            "model": str(model_dir),
            "train_examples": len(train),
            "val_examples": {p: len(ds) for p, ds in vals},
        }
    )
    write_metrics(run_dir, metrics)
    print(summary(metrics, run_dir))
    return metrics


def _image_size(cfg: DictConfig) -> int:
    """The backbone's image size without building it (our / transformers config.json)."""
    from flava.model.presets import preset

    key = cfg.model.pretrained_model_key
    if key and (Path(key) / "config.json").is_file():
        raw = json.loads((Path(key) / "config.json").read_text())
        image = (raw.get("config") or {}).get("image") or raw.get("image_config") or {}
        if "image_size" in image:
            return int(image["image_size"])
    if key:
        return 224  # flava_full
    return preset(cfg.model.preset).image.image_size


def summary(metrics: dict[str, Any], run_dir: Path) -> str:
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


__all__ = [
    "DatasetUnavailable",
    "FlavaClassifier",
    "TaskDataset",
    "TaskMetrics",
    "VQAAccuracy",
    "build_datasets",
    "load_finetuned",
    "majority_baseline",
    "run",
]
