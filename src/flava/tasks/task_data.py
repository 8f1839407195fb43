"""Downstream datasets: the task logic on the sources of `flava.data.sources`.

Every fine-tuning and evaluation dataset is a `TaskDataset` of decoded `Sample`s (an image and /
or one text, an optional second text `pair`, and a `target`: a class index, a float for
regression or {answer index: soft score} for VQA) made from a source's raw `Sample`s
(`source_task`); every format is read by its source type (`flava.data.sources.build`), the
named data kinds are translated into source configs by `flava.tasks.named_kinds`, labels follow
their source type's rule (`flava.data.sources.labels`) and images are decoded by
`flava.data.sources.decode_image` only. Here are the task's side: decoding for the inputs a
task reads, VQA's answer vocabulary and soft scores, and the embedded scenes' three tasks
(`SceneTask`: image, pair, vqa). A sample that cannot be used raises `BadSample` (counted and
skipped by the command, never a traceback); a missing file fails at once with one line naming
it (`DatasetUnavailable`, a `SourceError`: exit status 2 from the entry points).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from flava.config import ConfigError, SourceConfig
from flava.config.loader import from_fields
from flava.data import sources
from flava.data.sources import (
    BadSample,
    IndexedSource,
    Sample,
    SourceError,
    StreamingSource,
    decode_image,
)
from flava.data.sources.labels import LabelSpace, space_of

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


def read_source(role: str = "train", **fields: Any) -> IndexedSource | StreamingSource:
    """The source of these `SourceConfig` fields, read by index (a streamed one whole)."""
    return sources.build(from_fields(SourceConfig, fields), role, whole=True)


def named_task(
    kind: str, split: str, needs: Sequence[str], task_type: str = "classification", **keys: Any
) -> TaskDataset:
    """The `split` of the named data kind `kind` with these data keys (name, root, size, ...):
    `flava.tasks.named_kinds.source_of`, then `source_task`."""
    from flava.config.finetune import FinetuneDataConfig, SplitConfig
    from flava.tasks.named_kinds import source_of

    size = keys.pop("size", None)
    classes = keys.pop("classes", None)
    d = from_fields(FinetuneDataConfig, {"kind": kind, **keys})
    entry = source_of(d, split=SplitConfig(name=split))
    if classes:
        entry = replace(entry, classes=list(classes))
    source = sources.build(entry, "train", whole=True)
    return source_task(source, needs, task_type, size)


def glue_dataset(task: str, split: str, size: int | None = None) -> TaskDataset:
    """One GLUE split (data.kind=glue data.name=`task`) as a `TaskDataset`."""
    kind = "regression" if task == "stsb" else "classification"
    return named_task("glue", split, ("text",), kind, name=task, size=size)


def image_folder_task(
    root: str, split: str, classes: list[str] | None = None, size: int | None = None
) -> TaskDataset:
    """`root/<split>/<class>/<image>` (or `root/<class>/<image>`), data.kind=image_folder, as a
    classification set; `classes`: the class folders in label order (another split's)."""
    return named_task("image_folder", split, ("image",), root=root, classes=classes, size=size)


def _cap(rows: list[Any], size: int | None) -> list[Any]:
    return rows if size is None else rows[:size]


# ---------------------------------------------------------------------------------------------
# any source: labels named by the data


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
    source: IndexedSource | StreamingSource,
    needs: Sequence[str],
    task_type: str = "classification",
    size: int | None = None,
    space: LabelSpace | None = None,
) -> TaskDataset:
    """A source as a TaskDataset; `space` (names, target) from the training split, else the
    source's own (`space_of`: its type's label rule); `needs`: the inputs the task reads
    ("image", "text")."""
    labels = source.labels()
    names, to_target = space or space_of(source, task_type)
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
# VQAv2

_NUMBER_WORDS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
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


def answer_vocabulary(answer_lists: Sequence[Sequence[str]], size: int) -> list[str]:
    """The `size` most frequent normalised answers (every human answer counts; ties by name)."""
    counts = Counter(normalize_answer(a) for answers in answer_lists for a in answers)
    counts.pop("", None)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def vqa_task(
    source: IndexedSource | StreamingSource, vocab: list[str], size: int | None = None
) -> TaskDataset:
    """A VQAv2 split (a `vqa` source) with soft answer scores over `vocab`."""
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
