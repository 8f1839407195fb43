"""Downstream datasets as thin presets on the readers of `flava.data.sources`.

Every fine-tuning and evaluation dataset is a `TaskDataset` of `Example`s (an image and / or a
text, an optional second text, and a target) built from a source's raw `Sample`s, with the
images decoded by `flava.data.sources.decode_image` only. A sample that cannot be used raises
`BadSample` (counted and skipped by the command, never a traceback). Kinds:

- `source`: any configured source (`SourceConfig`: records JSONL / CSV, image folders, Hugging
  Face datasets, webdataset shards, captions folders) for your own data; labels as read, named
  by the data (class folders, `ClassLabel` names, or the distinct label strings);
- `embedded`: the generated scenes (flava.data.scenes): `image` (shape classes), `pair`
  (captions[0], statement) -> entailed, `vqa` (image, question) -> answer in ANSWERS;
- `glue`: a Hugging Face source (`load_dataset("glue", task)`) with the task's text columns;
- `torchvision`: the torchvision classification sets of the paper's linear probes (CIFAR-10/100,
  MNIST, Food101, Cars, Aircraft, DTD, Pets, Flowers102, STL-10, GTSRB, PCAM, CLEVR counts,
  FER2013, Country211, RenderedSST2) in torchvision's layout under a root directory;
- `image_folder`: `root/<split>/<class>/<image>`, or `root/<class>/<image>` as it is;
- `vqa`: VQAv2 questions + annotations JSON and the COCO image directory;
- `snli_ve`: SNLI-VE jsonl (Flickr30k image id, sentence2, gold_label) + Flickr30k images;
- `hateful_memes`: a records source over the jsonl (img, text, label) under the dataset root.

Retrieval sets (Karpathy COCO / Flickr30K JSON, captions folders, embedded scenes) are sources
of images with all their captions. A missing file fails at once with one line naming it
(`DatasetUnavailable`, a `SourceError`: exit status 2 from the entry points).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from flava.config import ConfigError, SourceConfig
from flava.data.sources import (
    BadSample,
    ImageFolder,
    IndexedSource,
    Records,
    Sample,
    SourceError,
    decode_image,
)
from flava.data.sources.folders import read_rows

SNLI_VE_LABELS = ["entailment", "neutral", "contradiction"]
GLUE_TASKS: dict[str, tuple[str, str | None, int]] = {
    # task: (first text column, second text column, outputs; 1 = regression)
    "cola": ("sentence", None, 2),
    "sst2": ("sentence", None, 2),
    "mrpc": ("sentence1", "sentence2", 2),
    "qqp": ("question1", "question2", 2),
    "stsb": ("sentence1", "sentence2", 1),
    "mnli": ("premise", "hypothesis", 3),
    "qnli": ("question", "sentence", 2),
    "rte": ("sentence1", "sentence2", 2),
    "wnli": ("sentence1", "sentence2", 2),
}
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
"""data.name -> (torchvision class, the folder it reads under data.root, torchvision's layout)."""
TRAIN_FLAG_DATASETS = ("cifar10", "cifar100", "mnist")
"""Datasets whose torchvision class takes train=True/False instead of a split name."""
SPLIT_SPELLINGS = {"country211": {"val": "valid"}}
UNNAMED_CLASSES = {"pcam": ["normal tissue", "metastatic tissue"]}
"""Class names of sets whose torchvision class names none and keeps its labels out of reach."""
"""Split names that a torchvision class spells its own way (validation is val elsewhere)."""
DatasetUnavailable = SourceError
"""A dataset that is not where the configuration says; the message is one line."""


@dataclass
class Example:
    """One sample: image and / or text (+ second text) and a target."""

    # target: a class index, a float (regression) or {answer index: soft score} (VQA)

    image: Image.Image | None = None
    text: str | None = None
    text_pair: str | None = None
    target: Any = None


@dataclass
class TaskDataset:
    """A list-backed dataset: `rows` are turned into `Example`s by `make` (images load lazily)."""

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

    def __getitem__(self, index: int) -> Example:
        """Example `index` (raises `BadSample` for a sample that cannot be used)."""
        return self.make(self.rows[index])

    def target(self, index: int) -> Any:
        """The target of example `index` (without loading its image when possible)."""
        if self.target_of is not None:
            return self.target_of(self.rows[index])
        return self[index].target

    def subset(self, indices: Sequence[int]) -> TaskDataset:
        """The examples at `indices` (a carved-out validation split, a capped set)."""
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


def open_image(path: Path | str) -> Image.Image:
    """An image file decoded by the one image decoder (`BadSample` if it cannot be used)."""
    return decode_image(str(path))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetUnavailable(f"{what}: {path} not found")
    return path


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


def example_of(sample: Sample, needs: Sequence[str], to_target: Callable[[Any], Any]) -> Example:
    """The `Example` of a raw sample: its image decoded, its first text, second text, target."""
    text = sample.texts[0] if sample.texts else None
    if "image" in needs and sample.image is None:
        raise BadSample("missing_image", f"sample {sample.key!r} has no image")
    if "text" in needs and text is None:
        raise BadSample("empty_text", f"sample {sample.key!r} has no text")
    image = decode_image(sample.image) if "image" in needs else None
    return Example(
        image=image, text=text, text_pair=sample.pair, target=to_target(sample.raw_label)
    )


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
        lambda i: example_of(source.sample(i), needs, to_target),
        outputs,
        names,
        lambda i: to_target(labels[i]),
        (names, to_target),
        getattr(source, "classes", None),
    )


def build_source(cfg: Any, role: str) -> IndexedSource:
    """A configured source read by index (streamed ones: their preview, read whole)."""
    from flava.data import sources

    if cfg.type == "embedded":
        raise ConfigError("data.source.type=embedded: use data.kind=embedded for the scenes")
    source = sources.build(cfg, role)
    if isinstance(source, sources.StreamingSource):
        source.preview_size = 10**9  # fine-tuning / evaluation sets are read whole, once
    return source


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

    def __getitem__(self, index: int) -> Example:
        """Scene `index` as an example of the task."""
        s = self.scenes[index]
        if self.task == "image":
            return Example(image=s.image, target=s.label)
        if self.task == "pair":
            return Example(text=s.captions[0], text_pair=s.statement, target=int(s.entailed))
        return Example(image=s.image, text=s.question, target={self._answers[s.answer]: 1.0})

    def target(self, index: int) -> Any:
        """The target of scene `index`."""
        return self[index].target


# ---------------------------------------------------------------------------------------------
# GLUE through Hugging Face datasets


def glue_source_config(
    task: str, split: str, hf_path: str = "glue", cache_dir: str | None = None
) -> Any:
    """The `SourceConfig` of one GLUE split: a Hugging Face source with the task's columns.

    `hf_path` is a dataset on the Hub or in the cache ("glue", "nyu-mll/glue"), or a directory
    holding each task as saved by `datasets` (`load_dataset("glue", task).save_to_disk(
    f"{hf_path}/{task}")`).
    """
    from omegaconf import OmegaConf

    if task not in GLUE_TASKS:
        raise ConfigError(f"data.name={task!r} is invalid: GLUE tasks are {', '.join(GLUE_TASKS)}")
    a, b, _ = GLUE_TASKS[task]
    saved = Path(hf_path).expanduser() / task
    where = dict(path=str(saved), key="") if saved.is_dir() else dict(key=hf_path, subset=task)
    fields = dict(type="huggingface", **where, split=split, text_columns=[a])
    fields.update(text_pair_column=b, label_column="label", image_column="", cache_dir=cache_dir)
    return OmegaConf.merge(OmegaConf.structured(SourceConfig), fields)


def glue_dataset(
    task: str,
    split: str,
    size: int | None = None,
    hf_path: str = "glue",
    cache_dir: str | None = None,
) -> TaskDataset:
    """One GLUE split; fails at once, in one line, when `datasets` or the data is unavailable."""
    cfg = glue_source_config(task, split, hf_path, cache_dir)
    try:
        import datasets  # noqa: F401
    except ModuleNotFoundError:
        raise DatasetUnavailable(
            f"GLUE {task} needs the Hugging Face datasets package: pip install datasets"
        ) from None
    try:
        source = build_source(cfg, "train")
    except SourceError as exc:
        fetch = f"datasets.load_dataset('{hf_path}', '{task}')"
        raise DatasetUnavailable(
            f'GLUE {task} ({split}): {exc}; to fill the cache run `python -c "import datasets; '
            f'{fetch}"` on a connected machine'
        ) from None
    regression = GLUE_TASKS[task][2] == 1
    kind = "regression" if regression else "classification"
    space = label_space([], None, kind) if regression else None
    if not regression:
        names = source.class_names or [str(i) for i in range(GLUE_TASKS[task][2])]
        space = label_space(list(range(len(names))), names, kind)
    return source_task(source, ("text",), kind, size, space)


# ---------------------------------------------------------------------------------------------
# torchvision image classification


def torchvision_dataset(
    name: str, root: str | None, split: str, download: bool = False
) -> tuple[Any, list[str]]:
    """(torchvision dataset giving (PIL image, label), class names) for cifar10/food101/..."""
    if name not in TORCHVISION_DATASETS:
        raise ConfigError(
            f"data.name={name!r} is invalid: torchvision datasets are "
            f"{', '.join(TORCHVISION_DATASETS)}"
        )
    if root is None:
        raise ConfigError(f"data.root is required for the torchvision dataset {name}")
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
            ds = cls(root, train=split == "train", **kwargs)
        else:
            ds = cls(root, split=split, **kwargs)
    except (RuntimeError, FileNotFoundError, ImportError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise DatasetUnavailable(
            f"{cls_name} {split} not found under {root} (expected {Path(root) / folder}; {first}): "
            f"place the dataset there, or set data.download=true on a connected machine"
        ) from None
    except ValueError as exc:  # torchvision's check of the split name
        raise ConfigError(f"{cls_name}: {(str(exc).strip().splitlines() or [''])[0]}") from None
    classes = list(getattr(ds, "classes", []) or UNNAMED_CLASSES.get(name, []))
    if not classes:  # GTSRB, FER2013, CLEVR: no names, numbered classes
        labels = torchvision_labels(ds)
        classes = [str(i) for i in range(max(labels) + 1)] if labels else []
    return ds, classes


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


def torchvision_task(
    name: str, root: str | None, split: str, size: int | None = None, download: bool = False
) -> TaskDataset:
    """A torchvision classification split as a TaskDataset."""
    ds, classes = torchvision_dataset(name, root, split, download)
    rows = list(range(len(ds)))[: size if size is not None else None]

    def make(i: int) -> Example:
        image, label = ds[i]
        return Example(image=image, target=int(label))

    labels = torchvision_labels(ds)
    target_of = (lambda i: labels[i]) if labels is not None else None
    return TaskDataset(rows, make, len(classes), classes, target_of)


# ---------------------------------------------------------------------------------------------
# image folders


def image_folder_path(root: str | None, split: str | None) -> Path:
    """`root/<split>` when it exists, else `root` itself when it holds the class folders."""
    if root is None:
        raise ConfigError("data.root is required for image_folder data")
    base = Path(root).expanduser()
    if split and (base / split).is_dir():
        return base / split
    if base.is_dir() and split and _holds_images(base):
        return base
    return _need(base / split if split else base, "image folder")


def _holds_images(folder: Path) -> bool:
    """Whether `folder` is itself a class folder layout (images one level down)."""
    from flava.data.sources import image_files

    return any(c.is_dir() and image_files(c) for c in folder.iterdir())


def image_folder_task(
    root: str | None, split: str, classes: list[str] | None = None, size: int | None = None
) -> TaskDataset:
    """`root/<split>/<class>/<image>` (or `root/<class>/<image>`) as a classification set."""
    folder = ImageFolder(image_folder_path(root, split), classes)
    names = folder.class_names or []
    space = label_space(list(range(len(names))), names, "classification")
    return source_task(folder, ("image",), "classification", size, space)


def has_split_folder(root: str | None, split: str | None) -> bool:
    """Whether `root/<split>` exists (else the folder is split by fraction, or read as it is)."""
    return bool(root and split and (Path(root).expanduser() / split).is_dir())


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


def _load_json(path: Path, what: str) -> Any:
    _need(path, what)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetUnavailable(f"{what}: {path} is not valid JSON ({exc.msg})") from None


def read_vqa(root: str | None, files: dict[str, str]) -> list[tuple[Path, str, list[str], int]]:
    """[(image path, question, human answers, question id)] from VQAv2's published files."""
    # files: questions (v2_OpenEnded_mscoco_<split>2014_questions.json), annotations
    # (v2_mscoco_<split>2014_annotations.json), images (the COCO <split>2014 directory) and
    # optionally image_pattern (default COCO_<images dir name>_{image_id:012d}.jpg).
    base = Path(root or ".")
    for key in ("questions", "annotations", "images"):
        if key not in files:
            raise ConfigError(f"VQA data needs files.{key} in the split config")
    questions = _load_json(base / files["questions"], "VQA questions file")["questions"]
    annotations = _load_json(base / files["annotations"], "VQA annotations file")["annotations"]
    images = _need(base / files["images"], "VQA image directory")
    pattern = files.get("image_pattern") or f"COCO_{images.name}_{{image_id:012d}}.jpg"
    by_id = {a["question_id"]: a for a in annotations}
    rows = []
    for q in questions:
        ann = by_id.get(q["question_id"])
        if ann is None:
            raise DatasetUnavailable(
                f"VQA annotations file has no answers for question {q['question_id']}"
            )
        answers = [a["answer"] for a in ann["answers"]]
        path = images / pattern.format(image_id=q["image_id"])
        rows.append((path, q["question"], answers, q["question_id"]))
    if rows and not rows[0][0].exists():
        raise DatasetUnavailable(
            f"VQA image {rows[0][0]} not found (files.images / files.image_pattern)"
        )
    return rows


def answer_vocabulary(answer_lists: Sequence[Sequence[str]], size: int) -> list[str]:
    """The `size` most frequent normalised answers (every human answer counts; ties by name)."""
    counts = Counter(normalize_answer(a) for answers in answer_lists for a in answers)
    counts.pop("", None)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def vqa_task(
    rows: list[tuple[Path, str, list[str], int]], vocab: list[str], size: int | None = None
) -> TaskDataset:
    """A VQAv2 split (rows from `read_vqa`) with soft answer scores over `vocab`."""
    rows = _cap(rows, size)
    index = {a: i for i, a in enumerate(vocab)}

    def make(r: tuple[Path, str, list[str], int]) -> Example:
        return Example(image=open_image(r[0]), text=r[1], target=vqa_soft_scores(r[2], index))

    return TaskDataset(rows, make, len(vocab), list(vocab), lambda r: vqa_soft_scores(r[2], index))


# ---------------------------------------------------------------------------------------------
# SNLI-VE and Hateful Memes (jsonl)


def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    _need(path, what)
    return read_rows(path)


def snli_ve_task(root: str | None, files: dict[str, str], size: int | None = None) -> TaskDataset:
    """SNLI-VE (files.annotations: snli_ve_<split>.jsonl, files.images: Flickr30k images)."""
    base = Path(root or ".")
    ann = _read_jsonl(base / files.get("annotations", "snli_ve_train.jsonl"), "SNLI-VE file")
    images = _need(base / files.get("images", "flickr30k_images"), "SNLI-VE image directory")
    labels = {name: i for i, name in enumerate(SNLI_VE_LABELS)}
    rows = []
    for r in ann:
        if r.get("gold_label") not in labels:
            continue  # "-": no annotator agreement
        image_id = str(r.get("Flikr30kID") or r.get("Flickr30kID") or r.get("Flickr30K_ID"))
        name = image_id if Path(image_id).suffix else f"{image_id}.jpg"
        rows.append((images / name, r["sentence2"], labels[r["gold_label"]]))
    rows = _cap(rows, size)
    if rows and not rows[0][0].exists():
        raise DatasetUnavailable(f"SNLI-VE image {rows[0][0]} not found (files.images)")
    return TaskDataset(
        rows,
        lambda r: Example(image=open_image(r[0]), text=r[1], target=r[2]),
        len(SNLI_VE_LABELS),
        list(SNLI_VE_LABELS),
        lambda r: r[2],
    )


def hateful_memes_task(
    root: str | None, files: dict[str, str], size: int | None = None
) -> TaskDataset:
    """Hateful Memes (files.annotations: train.jsonl / dev_seen.jsonl; img paths under root)."""
    base = Path(root or ".")
    path = _need(base / files.get("annotations", "train.jsonl"), "Hateful Memes file")
    records = Records(path, "img", ["text"], None, "label", base / files.get("images", ""))
    names = ["not hateful", "hateful"]
    return source_task(
        records,
        ("image", "text"),
        "classification",
        size,
        label_space([0, 1], names, "classification"),
    )


# ---------------------------------------------------------------------------------------------
# retrieval sets


def karpathy_split(
    annotations: Path, image_root: Path, split: str = "test", size: int | None = None
) -> IndexedSource:
    """A Karpathy split (dataset_coco.json / dataset_flickr30k.json): images with every caption."""
    from flava.data.sources.karpathy import KarpathySplit

    return _capped(KarpathySplit(annotations, image_root, split), size)


def captions_folder(root: Path, size: int | None = None) -> IndexedSource:
    """A captions folder (captions.jsonl / .csv; caption, captions or text fields) as a source."""
    from flava.data.sources import CaptionedImages

    return _capped(CaptionedImages(root), size)


def _capped(source: IndexedSource, size: int | None) -> IndexedSource:
    """The first `size` samples of a source (all when None)."""
    from flava.data.sources.base import SampleList

    if size is None or size >= len(source):
        return source
    return SampleList([source.sample(i) for i in range(size)], source.describe())


def image_classification_split(
    kind: str,
    split: str,
    image_size: int,
    root: str | None = None,
    name: str | None = None,
    size: int | None = None,
    seed: int = 0,
    download: bool = False,
    classes: list[str] | None = None,
) -> Any:
    """Labelled images of one split: embedded scenes (shapes), an image folder or torchvision."""
    if kind == "embedded":
        return SceneTask("image", split, size or 512, image_size, seed)
    if kind == "image_folder":
        return image_folder_task(root, split, classes, size)
    if kind == "torchvision":
        if not name:
            raise ConfigError("data.name is required for torchvision data (e.g. cifar10)")
        return torchvision_task(name, root, split, size, download)
    raise ConfigError(f"data.kind={kind!r} is invalid: use embedded, image_folder or torchvision")
