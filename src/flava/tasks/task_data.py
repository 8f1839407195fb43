"""Downstream datasets: the task logic on the sources of `flava.data.sources`.

Every fine-tuning and evaluation dataset is a `TaskDataset` of decoded `Sample`s (an image and /
or one text, an optional second text `pair`, and a `target`: a class index, a float for
regression or {answer index: soft score} for VQA) made from a source's raw `Sample`s; every
format is read by its source type (`flava.data.sources.build`), and images are decoded by
`flava.data.sources.decode_image` only. Here are the labels, the answer vocabulary and soft
scores, and which source each data kind reads. A sample that cannot be used raises `BadSample`
(counted and skipped by the command, never a traceback). Kinds:

- `source`: any configured source (`SourceConfig`: records JSONL / CSV, image folders, Hugging
  Face datasets, webdataset shards, captions folders) for your own data; labels as read, named
  by the data (class folders, `ClassLabel` names, or the distinct label strings);
- `embedded`: the generated scenes (flava.data.scenes): `image` (shape classes), `pair`
  (captions[0], statement) -> entailed, `vqa` (image, question) -> answer in ANSWERS;
- `glue`: the `glue` source type (a Hugging Face set with the task's text columns);
- `torchvision`: the `torchvision` source type (the classification sets of the paper's linear
  probes in torchvision's layout under a root directory);
- `image_folder`: `root/<split>/<class>/<image>`, or `root/<class>/<image>` as it is;
- `vqa`: the `vqa` source type (VQAv2 questions + annotations JSON, COCO images) with soft
  scores over the most frequent answers;
- `snli_ve`: the `snli_ve` source type (SNLI-VE jsonl + Flickr30k images);
- `hateful_memes`: the `hateful_memes` source type (the jsonl's img, text, label).

The evaluation commands read their data through `flava.tasks.eval_data` (labelled images as a
`source_task`, retrieval sets as sources of images with all their captions). A missing file
fails at once with one line naming it (`DatasetUnavailable`, a `SourceError`: exit status 2
from the entry points).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from flava.config import ConfigError, SourceConfig
from flava.data import sources
from flava.data.sources import (
    BadSample,
    IndexedSource,
    Sample,
    SourceError,
    decode_image,
)
from flava.data.sources.glue import GLUE_TASKS
from flava.data.sources.registry import need_exists
from flava.data.sources.snli_ve import SNLI_VE_LABELS
from flava.data.sources.torchvision_sets import TORCHVISION_DATASETS

DatasetUnavailable = SourceError
"""A dataset that is not where the configuration says; the message is one line."""


@dataclass
class TaskDataset:
    """A list-backed dataset: `make` turns `rows` into decoded `Sample`s with their `target`
    (images load lazily)."""

    rows: Sequence[Any]
    make: Any
    num_outputs: int
    class_names: list[str] = field(default_factory=list)
    target_of: Any = None
    space: Any = None
    """(class names, label -> target) of a source's labels; validation splits reuse it."""
    folder_classes: list[str] | None = None
    """Class folder names in label order (image folders; validation folders reuse them)."""

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        """Sample `index`, decoded (raises `BadSample` for a sample that cannot be used)."""
        return self.make(self.rows[index])

    def target(self, index: int) -> Any:
        """The target of sample `index` (without loading its image when possible)."""
        if self.target_of is not None:
            return self.target_of(self.rows[index])
        return self[index].target

    def subset(self, indices: Sequence[int]) -> TaskDataset:
        """The samples at `indices` (a carved-out validation split, a capped set)."""
        rows = [self.rows[i] for i in indices]
        return TaskDataset(
            rows,
            self.make,
            self.num_outputs,
            self.class_names,
            self.target_of,
            self.space,
            self.folder_classes,
        )


def read_source(role: str = "train", **fields: Any) -> IndexedSource:
    """The source of these `SourceConfig` fields, read by index (a streamed one whole)."""
    cfg = OmegaConf.merge(OmegaConf.structured(SourceConfig), fields)
    return sources.build(cfg, role, whole=True)  # type: ignore[return-value]


def _cap(rows: list[Any], size: int | None) -> list[Any]:
    return rows if size is None else rows[:size]


# ---------------------------------------------------------------------------------------------
# any source: labels named by the data


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def label_space(
    values: Sequence[Any], class_names: Sequence[str] | None, task_type: str
) -> tuple[list[str], Callable[[Any], Any]]:
    """(class names, label value -> target) for labels as read.

    Regression: floats. Integer labels (ints, integral floats, digit strings): class i, named by
    `class_names` when the data names them. Anything else: the sorted distinct label strings.
    A value outside the space raises `BadSample("bad_label")`.
    """
    present = [v for v in values if v is not None and v != ""]
    if task_type == "regression":

        def number(value: Any) -> float:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise BadSample("bad_label", f"label {value!r} is not a number") from None

        return [], number
    ints = [_as_int(v) for v in present]
    if present and all(i is not None and i >= 0 for i in ints):
        count = max(max(ints) + 1, len(class_names or []))  # type: ignore[type-var]
        names = list(class_names) if class_names and len(class_names) >= count else None
        names = names or [str(i) for i in range(count)]
        index: dict[Any, int] = {}
    else:
        names = sorted({str(v).strip() for v in present})
        index = {n: i for i, n in enumerate(names)}

    def target(value: Any) -> int:
        i = _as_int(value) if not index else index.get(str(value).strip())
        if i is None or not 0 <= i < len(names):
            raise BadSample("bad_label", f"label {value!r} is not one of the {len(names)} classes")
        return i

    return names, target


def task_sample(sample: Sample, needs: Sequence[str], to_target: Callable[[Any], Any]) -> Sample:
    """A raw sample decoded for a task: its image decoded (when `needs` it, else left out), its
    first text, its second text and the target of its label."""
    text = sample.text
    if "image" in needs and sample.image is None:
        raise BadSample("missing_image", f"sample {sample.key!r} has no image")
    if "text" in needs and text is None:
        raise BadSample("empty_text", f"sample {sample.key!r} has no text")
    image = decode_image(sample.image) if "image" in needs else None
    return replace(sample, image=image, texts=sample.texts[:1], target=to_target(sample.raw_label))


def source_task(
    source: IndexedSource,
    needs: Sequence[str],
    task_type: str = "classification",
    size: int | None = None,
    space: tuple[list[str], Callable[[Any], Any]] | None = None,
) -> TaskDataset:
    """A source as a TaskDataset; `space` (names, target) from the training split, else built
    from this source's labels; `needs`: the inputs the task reads ("image", "text")."""
    labels = source.labels()
    names, to_target = space or label_space(labels, source.class_names, task_type)
    outputs = 1 if task_type == "regression" else len(names)
    if task_type != "regression" and outputs < 2 and space is None:
        raise DatasetUnavailable(
            f"{source.describe()}: labels give {outputs} class; classification needs at least "
            "two (set label_column: to the label field)"
        )
    rows = _cap(list(range(len(source))), size)
    return TaskDataset(
        rows,
        lambda i: task_sample(source.sample(i), needs, to_target),
        outputs,
        names,
        lambda i: to_target(labels[i]),
        (names, to_target),
        getattr(source, "classes", None),
    )


# ---------------------------------------------------------------------------------------------
# embedded scenes


class SceneTask:
    """The embedded scenes as one of three tasks: image, pair or vqa."""

    def __init__(self, task: str, split: str, size: int, image_size: int, seed: int = 0) -> None:
        from flava.data.scenes import ANSWERS, SHAPES, SceneDataset

        if task not in ("image", "pair", "vqa"):
            raise ConfigError(f"data.name={task!r} is invalid: embedded tasks are image, pair, vqa")
        self.task = task
        split = {"validation": "val"}.get(split, split)
        self.scenes = SceneDataset(split=split, size=size, image_size=image_size, seed=seed)
        self.class_names = {
            "image": list(SHAPES),
            "pair": ["not entailed", "entailed"],
            "vqa": list(ANSWERS),
        }[task]
        self.num_outputs = len(self.class_names)
        self._answers = {a: i for i, a in enumerate(ANSWERS)}

    def __len__(self) -> int:
        """Number of scenes."""
        return len(self.scenes)

    def __getitem__(self, index: int) -> Sample:
        """Scene `index` as a decoded sample of the task."""
        s, key = self.scenes[index], str(index)
        if self.task == "image":
            return Sample(key, image=s.image, target=s.label)
        if self.task == "pair":
            return Sample(key, texts=[s.captions[0]], pair=s.statement, target=int(s.entailed))
        target = {self._answers[s.answer]: 1.0}
        return Sample(key, image=s.image, texts=[s.question], target=target)

    def target(self, index: int) -> Any:
        """The target of scene `index`."""
        return self[index].target


# ---------------------------------------------------------------------------------------------
# GLUE through Hugging Face datasets


def glue_dataset(
    task: str,
    split: str,
    size: int | None = None,
    hf_path: str = "glue",
    cache_dir: str | None = None,
) -> TaskDataset:
    """One GLUE split (the `glue` source type); fails at once, in one line, when `datasets` or
    the data is unavailable."""
    if task not in GLUE_TASKS:
        raise ConfigError(f"data.name={task!r} is invalid: GLUE tasks are {', '.join(GLUE_TASKS)}")
    fields = dict(key=hf_path, subset=task, split=split, cache_dir=cache_dir)
    source = read_source("train", type="glue", **fields)
    regression = GLUE_TASKS[task][2] == 1
    kind = "regression" if regression else "classification"
    space = label_space([], None, kind) if regression else None
    if not regression:
        names = source.class_names or [str(i) for i in range(GLUE_TASKS[task][2])]
        space = label_space(list(range(len(names))), names, kind)
    return source_task(source, ("text",), kind, size, space)


# ---------------------------------------------------------------------------------------------
# torchvision image classification


def torchvision_task(
    name: str, root: str | None, split: str, size: int | None = None, download: bool = False
) -> TaskDataset:
    """A torchvision classification split (the `torchvision` source type) as a TaskDataset."""
    if name not in TORCHVISION_DATASETS:
        raise ConfigError(
            f"data.name={name!r} is invalid: torchvision datasets are "
            f"{', '.join(TORCHVISION_DATASETS)}"
        )
    if root is None:
        raise ConfigError(f"data.root is required for the torchvision dataset {name}")
    source = read_source(type="torchvision", key=name, path=root, split=split, download=download)
    names = list(source.class_names or [])
    space = label_space(list(range(len(names))), names, "classification")
    return source_task(source, ("image",), "classification", size, space)


# ---------------------------------------------------------------------------------------------
# image folders


def image_folder_path(root: str | None, split: str | None) -> Path:
    """`root/<split>` when it exists, else `root` itself when it holds the class folders."""
    if root is None:
        raise ConfigError("data.root is required for image_folder data")
    base = Path(root).expanduser()
    if split and (base / split).is_dir():
        return base / split
    if base.is_dir() and split and holds_class_folders(base):
        return base
    return need_exists(base / split if split else base, "image folder")


def holds_class_folders(folder: Path) -> bool:
    """Whether `folder` is itself a class folder layout (images under its sub-folders)."""
    from flava.data.sources import image_files

    return any(c.is_dir() and image_files(c) for c in folder.iterdir())


def image_folder_task(
    root: str | None, split: str, classes: list[str] | None = None, size: int | None = None
) -> TaskDataset:
    """`root/<split>/<class>/<image>` (or `root/<class>/<image>`) as a classification set."""
    path = str(image_folder_path(root, split))
    folder = read_source(type="image_folder", path=path, classes=list(classes or []))
    names = folder.class_names or []
    space = label_space(list(range(len(names))), names, "classification")
    return source_task(folder, ("image",), "classification", size, space)


# ---------------------------------------------------------------------------------------------
# VQAv2

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten".split()  # noqa: SIM905
    )
} | {"none": "0"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$|~:]")


def normalize_answer(answer: str) -> str:
    """Light VQA answer normalisation: case, punctuation, number words, articles, spaces."""
    text = answer.lower().replace("\n", " ").replace("\t", " ").strip()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<!\d)\.(?!\d)", "", text)  # periods not inside numbers
    text = text.replace("'", "")
    text = _PUNCTUATION.sub(" ", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_soft_scores(answers: Sequence[str], vocab: dict[str, int]) -> dict[int, float]:
    """{answer index: min(#humans who gave it / 3, 1)} over the in-vocabulary answers."""
    counts = Counter(normalize_answer(a) for a in answers)
    return {vocab[a]: min(n / 3.0, 1.0) for a, n in counts.items() if a in vocab}


def vqa_split(root: str | None, files: dict[str, str]) -> IndexedSource:
    """One VQAv2 split (the `vqa` source type): questions with their images and human answers."""
    return read_source(type="vqa", path=root, files=dict(files))


def answer_vocabulary(answer_lists: Sequence[Sequence[str]], size: int) -> list[str]:
    """The `size` most frequent normalised answers (every human answer counts; ties by name)."""
    counts = Counter(normalize_answer(a) for answers in answer_lists for a in answers)
    counts.pop("", None)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def vqa_task(source: IndexedSource, vocab: list[str], size: int | None = None) -> TaskDataset:
    """A VQAv2 split (from `vqa_split`) with soft answer scores over `vocab`."""
    index = {a: i for i, a in enumerate(vocab)}
    answers = source.labels()

    def make(i: int) -> Sample:
        sample = source.sample(i)
        image = decode_image(sample.image)
        texts = [sample.texts[0]]
        return replace(sample, image=image, texts=texts, target=vqa_soft_scores(answers[i], index))

    rows = _cap(list(range(len(source))), size)
    return TaskDataset(
        rows, make, len(vocab), list(vocab), lambda i: vqa_soft_scores(answers[i], index)
    )


# ---------------------------------------------------------------------------------------------
# SNLI-VE and Hateful Memes


def snli_ve_task(root: str | None, files: dict[str, str], size: int | None = None) -> TaskDataset:
    """SNLI-VE (files.annotations: snli_ve_<split>.jsonl, files.images: Flickr30k images)."""
    source = read_source(type="snli_ve", path=root, files=dict(files))
    space = label_space(list(range(len(SNLI_VE_LABELS))), SNLI_VE_LABELS, "classification")
    return source_task(source, ("image", "text"), "classification", size, space)


def hateful_memes_task(
    root: str | None, files: dict[str, str], size: int | None = None
) -> TaskDataset:
    """Hateful Memes (files.annotations: train.jsonl / dev_seen.jsonl; img paths under root)."""
    records = read_source(type="hateful_memes", path=root, files=dict(files))
    space = label_space([0, 1], records.class_names, "classification")
    return source_task(records, ("image", "text"), "classification", size, space)
