"""The torchvision classification sets of the paper's linear probes, in torchvision's layout
under a root directory (CIFAR-10/100, MNIST, Food101, Cars, Aircraft, DTD, Pets, Flowers102,
STL-10, GTSRB, PCAM, CLEVR counts, FER2013, Country211, RenderedSST2).

A sample is one image (decoded by torchvision) with its class index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flava.config import ConfigError, SourceConfig
from flava.data.sources.errors import SourceError
from flava.data.sources.readers import IndexedSource
from flava.data.sources.registry import LABELLED_IMAGES, SourceType
from flava.data.sources.sample import Sample
from flava.objectives.kinds import Kind

TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "mnist": ("MNIST", "MNIST"),
    "food101": ("Food101", "food-101"),
    "stanford_cars": ("StanfordCars", "stanford_cars"),
    "fgvc_aircraft": ("FGVCAircraft", "fgvc-aircraft-2013b"),
    "dtd": ("DTD", "dtd"),
    "oxford_pets": ("OxfordIIITPet", "oxford-iiit-pet"),
    "flowers102": ("Flowers102", "flowers-102"),
    "stl10": ("STL10", "stl10_binary"),
    "gtsrb": ("GTSRB", "gtsrb"),
    "pcam": ("PCAM", "pcam"),
    "clevr_counts": ("CLEVRClassification", "clevr"),
    "fer2013": ("FER2013", "fer2013"),
    "country211": ("Country211", "country211"),
    "rendered_sst2": ("RenderedSST2", "rendered-sst2"),
}
"""key -> (torchvision class, the folder it reads under the root, torchvision's layout)."""
TRAIN_FLAG_DATASETS = ("cifar10", "cifar100", "mnist")
"""Datasets whose torchvision class takes train=True/False instead of a split name."""
SPLIT_SPELLINGS = {"country211": {"val": "valid"}}
"""Split names that a torchvision class spells its own way (validation is val elsewhere)."""
EVALUATED_VALIDATION = ("rendered_sst2",)
"""Sets whose validation split the evaluation commands read; the others' validation data is
held out of the training split (probe.val_fraction)."""
UNNAMED_CLASSES = {"pcam": ["normal tissue", "metastatic tissue"]}
"""Class names of sets whose torchvision class names none and keeps its labels out of reach."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def open_torchvision(name: str, root: str, split: str, download: bool = False) -> Any:
    """The torchvision dataset `name` (a key of `TORCHVISION_DATASETS`) of `split` under `root`;
    a one-line `SourceError` when it is not there."""
    import torchvision.datasets as tvd

    cls_name, folder = TORCHVISION_DATASETS[name]
    cls = getattr(tvd, cls_name)
    split = {"validation": "val"}.get(split, split)
    split = SPLIT_SPELLINGS.get(name, {}).get(split, split)
    kwargs = {} if cls_name == "FER2013" else {"download": download}  # FER2013: no download
    try:
        if name in TRAIN_FLAG_DATASETS:
            if split not in ("train", "test"):
                raise ConfigError(f"{cls_name} splits are train and test, not {split!r}")
            return cls(root, train=split == "train", **kwargs)
        return cls(root, split=split, **kwargs)
    except (RuntimeError, FileNotFoundError, ImportError) as exc:
        raise SourceError(
            f"{cls_name} {split} not found under {root} (expected {Path(root) / folder}; "
            f"{_first_line(exc)[:120]}): place the dataset there, or set data.download=true on "
            "a connected machine"
        ) from None
    except ValueError as exc:  # torchvision's check of the split name
        raise ConfigError(f"{cls_name}: {_first_line(exc)}") from None


def torchvision_labels(ds: Any) -> list[int] | None:
    """The labels of a torchvision dataset in index order, read without decoding an image."""
    for attr in ("targets", "_labels", "labels"):
        labels = getattr(ds, attr, None)
        if labels is not None and len(labels):
            return [int(v) for v in labels]
    samples = getattr(ds, "_samples", None)  # [(path or pixels, label)]
    if samples:
        return [int(label) for _, label in samples]
    return None


class _ReadLabels(Sequence):
    """The labels of a set that keeps them out of reach: each read with its sample."""

    def __init__(self, source: TorchvisionSet) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: Any) -> Any:
        return self.source.sample(index).raw_label


class TorchvisionSet(IndexedSource):
    """One split of a torchvision classification set: (PIL image, class index) samples."""

    kinds = frozenset({Kind.image})

    def __init__(self, name: str, root: str, split: str, download: bool = False) -> None:
        self.name, self.split = name, split
        self.dataset = open_torchvision(name, root, split, download)
        self.known_labels = torchvision_labels(self.dataset)
        classes = getattr(self.dataset, "classes", []) or UNNAMED_CLASSES.get(name, [])
        if not classes:  # GTSRB, FER2013, CLEVR: no names, numbered classes
            labels = self.known_labels
            classes = [str(i) for i in range(max(labels) + 1)] if labels else []
        self.class_names = list(classes)
        self.numbered_classes = self.class_names

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int) -> Sample:
        """Image `index` (decoded by torchvision) and its class index."""
        image, label = self.dataset[index]
        return Sample(key=str(index), image=image, label=int(label), raw_label=int(label))

    def labels(self) -> Sequence[Any]:
        """Every class index: read without decoding where the set keeps them, else each with
        its image when asked for."""
        return self.known_labels if self.known_labels is not None else _ReadLabels(self)

    def describe(self) -> str:
        """Set, split and size."""
        return f"torchvision {self.name} ({self.split}, {len(self)} images)"


def _build(cfg: SourceConfig, role: str, image_size: int) -> TorchvisionSet:
    if cfg.key not in TORCHVISION_DATASETS:
        raise SourceError(
            f"torchvision set {cfg.key!r} is not known; use one of: "
            f"{', '.join(TORCHVISION_DATASETS)}"
        )
    if not cfg.path:
        raise SourceError(f"torchvision source {cfg.key} needs path: (the dataset root)")
    split = cfg.split or ("train" if role == "train" else "test")
    return TorchvisionSet(cfg.key, str(cfg.path), split, cfg.download)


def _check(cfg: SourceConfig) -> None:
    if cfg.key not in TORCHVISION_DATASETS or not cfg.path:
        _build(cfg, "train", 0)  # the one-line message


TORCHVISION = SourceType(
    "torchvision",
    ("key", "path", "split", "download"),
    _build,
    _check,
    frozenset({LABELLED_IMAGES}),
)
"""`type: torchvision`: the set `key` (cifar10, food101, ...) under the root `path`."""
