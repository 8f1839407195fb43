"""Downstream datasets behind one small interface, read from their published layouts.

Every fine-tuning dataset yields `Example`s (an image and / or a text, an optional second text,
and a target) and knows its number of outputs. Kinds:

- `embedded`: the generated scenes (flava.data.scenes): `image` (shape classes), `pair`
  (captions[0], statement) -> entailed, `vqa` (image, question) -> answer in ANSWERS;
- `glue`: Hugging Face `datasets` `load_dataset("glue", task)` (imported lazily);
- `torchvision`: CIFAR10 / Food101 / RenderedSST2 under a root directory;
- `image_folder`: `root/<split>/<class>/<image>`;
- `vqa`: VQAv2 questions + annotations JSON and the COCO image directory;
- `snli_ve`: SNLI-VE jsonl (Flickr30k image id, sentence2, gold_label) + Flickr30k images;
- `hateful_memes`: Hateful Memes jsonl (img, text, label) under the dataset root.

Retrieval and zero-shot sets (Karpathy COCO / Flickr30K JSON, captions.jsonl folders, image
folders) are read here too. A missing file fails at once with one line naming it
(`DatasetUnavailable`, a `ConfigError`: exit status 2 from the entry points).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from flava.config import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
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
    "food101": ("Food101", "food-101"),
    "rendered_sst2": ("RenderedSST2", "rendered-sst2"),
}


class DatasetUnavailable(ConfigError):
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

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.rows)

    def __getitem__(self, index: int) -> Example:
        """Example `index`."""
        return self.make(self.rows[index])

    def target(self, index: int) -> Any:
        """The target of example `index` (without loading its image when possible)."""
        if self.target_of is not None:
            return self.target_of(self.rows[index])
        return self[index].target


def open_image(path: Path) -> Image.Image:
    """Read an image file fully (no open file handle is kept)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise DatasetUnavailable(f"image {path} not found") from None


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetUnavailable(f"{what}: {path} not found")
    return path


def _cap(rows: list[Any], size: int | None) -> list[Any]:
    return rows if size is None else rows[:size]


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


@contextlib.contextmanager
def _offline_when_unreachable(datasets: Any) -> Iterator[None]:
    """Cache-only datasets / huggingface_hub while the hub is unreachable (no retry waits)."""
    from huggingface_hub import constants

    from flava.checkpoints.pretrained import _hub_reachable

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    if not saved[0] and not _hub_reachable():
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def glue_dataset(
    task: str,
    split: str,
    size: int | None = None,
    hf_path: str = "glue",
    cache_dir: str | None = None,
) -> TaskDataset:
    """One GLUE split; fails at once, in one line, when `datasets` or the data is unavailable."""
    if task not in GLUE_TASKS:
        raise ConfigError(f"data.name={task!r} is invalid: GLUE tasks are {', '.join(GLUE_TASKS)}")
    fetch = (
        f'on a connected machine run `python -c "import datasets; '
        f"datasets.load_dataset('{hf_path}', '{task}')\"`, copy ~/.cache/huggingface/datasets "
        "to this one, and set HF_DATASETS_CACHE (or data.cache_dir) to where it is"
    )
    try:
        import datasets
    except ModuleNotFoundError:
        raise DatasetUnavailable(
            f"GLUE {task} needs the Hugging Face datasets package and the dataset in its cache: "
            f"pip install datasets; {fetch}"
        ) from None
    try:
        with _offline_when_unreachable(datasets):
            data = datasets.load_dataset(hf_path, task, split=split, cache_dir=cache_dir)
    except Exception as exc:  # offline, not cached, unknown split ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DatasetUnavailable(
            f"GLUE {task} ({split}) is not available: {type(exc).__name__}: {first}; {fetch}"
        ) from None
    a, b, outputs = GLUE_TASKS[task]
    if size is not None:
        data = data.select(range(min(size, len(data))))
    labels = data.features["label"]
    names = list(getattr(labels, "names", []) or [])

    def make(row: dict[str, Any]) -> Example:
        target = float(row["label"]) if outputs == 1 else int(row["label"])
        return Example(text=row[a], text_pair=row[b] if b else None, target=target)

    return TaskDataset(data, make, outputs, names, lambda r: make(r).target)


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
    try:
        if name == "cifar10":
            if split not in ("train", "test"):
                raise ConfigError(f"CIFAR10 splits are train and test, not {split!r}")
            ds = cls(root, train=split == "train", download=download)
        else:
            ds = cls(root, split=split, download=download)
    except (RuntimeError, FileNotFoundError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise DatasetUnavailable(
            f"{cls_name} {split} not found under {root} (expected {Path(root) / folder}; {first}): "
            f"place the dataset there, or set data.download=true on a connected machine"
        ) from None
    classes = list(getattr(ds, "classes", []))
    return ds, classes


def torchvision_task(
    name: str, root: str | None, split: str, size: int | None = None, download: bool = False
) -> TaskDataset:
    """A torchvision classification split as a TaskDataset."""
    ds, classes = torchvision_dataset(name, root, split, download)
    rows = list(range(len(ds)))[: size if size is not None else None]

    def make(i: int) -> Example:
        image, label = ds[i]
        return Example(image=image, target=int(label))

    labels = getattr(ds, "targets", None) or getattr(ds, "_labels", None)
    if labels is None and hasattr(ds, "_samples"):  # RenderedSST2: [(path, label)]
        labels = [label for _, label in ds._samples]
    target_of = (lambda i: int(labels[i])) if labels is not None else None
    return TaskDataset(rows, make, len(classes), classes, target_of)


# ---------------------------------------------------------------------------------------------
# image folders


def scan_image_folder(
    directory: Path, classes: list[str] | None = None
) -> tuple[list[tuple[Path, int]], list[str]]:
    """[(image path, class index)] and class names of `directory/<class>/<image>`."""
    _need(directory, "image folder")
    found = sorted(p.name for p in directory.iterdir() if p.is_dir())
    if not found:
        raise DatasetUnavailable(f"image folder {directory} has no class subfolders")
    classes = classes if classes is not None else found
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise DatasetUnavailable(
            f"image folder {directory}: class {unknown[0]!r} is not among the training classes"
        )
    items = [
        (p, index[c])
        for c in found
        for p in sorted((directory / c).rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise DatasetUnavailable(f"image folder {directory} holds no images")
    return items, classes


def image_folder_task(
    root: str | None, split: str, classes: list[str] | None = None, size: int | None = None
) -> TaskDataset:
    """`root/<split>/<class>/<image>` as a classification TaskDataset."""
    if root is None:
        raise ConfigError("data.root is required for image_folder data")
    items, classes = scan_image_folder(Path(root) / split, classes)
    rows = _cap(items, size)
    return TaskDataset(
        rows,
        lambda r: Example(image=open_image(r[0]), target=r[1]),
        len(classes),
        classes,
        lambda r: r[1],
    )


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
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetUnavailable(f"{what}: {path} line {n}: {exc.msg}") from None
    return rows


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
    path = base / files.get("annotations", "train.jsonl")
    ann = _read_jsonl(path, "Hateful Memes file")
    images = base / files.get("images", "")
    rows = []
    for r in ann:
        if "label" not in r:
            raise DatasetUnavailable(f"Hateful Memes file {path} has rows without a label")
        rows.append((images / r["img"], r["text"], int(r["label"])))
    rows = _cap(rows, size)
    if rows and not rows[0][0].exists():
        raise DatasetUnavailable(f"Hateful Memes image {rows[0][0]} not found (data.root)")
    return TaskDataset(
        rows,
        lambda r: Example(image=open_image(r[0]), text=r[1], target=r[2]),
        2,
        ["not hateful", "hateful"],
        lambda r: r[2],
    )


# ---------------------------------------------------------------------------------------------
# retrieval sets


@dataclass
class CaptionedImages:
    """Images (paths or PIL images) with every caption of each."""

    images: list[Any]
    captions: list[list[str]]

    def load(self, index: int) -> Image.Image:
        """Image `index` as a PIL image."""
        item = self.images[index]
        return item if isinstance(item, Image.Image) else open_image(Path(item))


def karpathy_split(
    annotations: Path, image_root: Path, split: str = "test", size: int | None = None
) -> CaptionedImages:
    """A Karpathy split (dataset_coco.json / dataset_flickr30k.json): images[].split etc."""
    data = _load_json(annotations, "Karpathy annotation file")
    images, captions = [], []
    for entry in data.get("images", []):
        if entry.get("split") != split:
            continue
        path = image_root / entry.get("filepath", "") / entry["filename"]
        images.append(path)
        captions.append([s["raw"] for s in entry["sentences"]])
    if not images:
        raise DatasetUnavailable(f"Karpathy annotation file {annotations} has no {split} images")
    images, captions = _cap(images, size), _cap(captions, size)
    if not Path(images[0]).exists():
        raise DatasetUnavailable(f"image {images[0]} not found (set data.image_root)")
    return CaptionedImages(images, captions)


def captions_folder(root: Path, size: int | None = None) -> CaptionedImages:
    """`root/captions.jsonl` with {"image": path relative to root, "captions": [...]} lines."""
    rows = _cap(_read_jsonl(root / "captions.jsonl", "captions file"), size)
    if not rows:
        raise DatasetUnavailable(f"captions file {root / 'captions.jsonl'} is empty")
    out = CaptionedImages([root / r["image"] for r in rows], [list(r["captions"]) for r in rows])
    if not Path(out.images[0]).exists():
        raise DatasetUnavailable(f"image {out.images[0]} not found")
    return out


class LazyImages(Sequence):
    """A read-only sequence of images loaded on access (`load(i)`), slices included."""

    def __init__(self, count: int, load: Any) -> None:
        self.count, self.load = count, load

    def __len__(self) -> int:
        """Number of images."""
        return self.count

    def __getitem__(self, index: Any) -> Any:
        """Image `index`, or a list of images for a slice."""
        if isinstance(index, slice):
            return [self.load(i) for i in range(*index.indices(self.count))]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.load(index)


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
