"""Class names and prompt templates of zero-shot classification: a dataset's defaults (ImageNet's
names and CLIP's templates shipped in `data/assets`, class folders' names, the scenes' own
templates) or the JSON list files given. Read by the zero-shot command and evaluation, and by
`flava-write-shards layout=clip_benchmark`, which writes them as CLIP_benchmark's text files.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from flava.config import ConfigError
from flava.config.common import TEMPLATE_SETS

DEFAULT_TEMPLATES = ["a photo of a {}."]
_WNID = re.compile(r"^n\d{8}$")


def imagenet_classnames() -> list[str]:
    """The 1,000 ImageNet-1k class names in label order (shipped with the package)."""
    return json.loads(
        (resources.files("flava") / "data/assets/imagenet_classnames.json").read_text()
    )


def imagenet_templates(count: int = 80) -> list[str]:
    """The CLIP zero-shot prompt templates: the 80 published ones or the 7-template subset."""
    if count not in (7, 80):
        raise ValueError(f"there are 80 and 7 template sets, not {count}")
    path = resources.files("flava") / f"data/assets/imagenet_templates_{count}.json"
    return json.loads(path.read_text())


def is_imagenet_style(class_dirs: list[str]) -> bool:
    """Whether the class folders are ImageNet-1k's 1000 WordNet ids."""
    return len(class_dirs) == 1000 and all(_WNID.match(c) for c in class_dirs)


def read_json_list(path: str, what: str) -> list[str]:
    """A JSON list of strings from a file; one-line ConfigError otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what}: {p} not found")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: {p} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ConfigError(f"{what}: {p} must hold a JSON list of strings")
    return data


def prompts(
    dataset_classes: list[str],
    kind: str,
    class_names: str | None = None,
    templates: str | None = None,
    section: str = "zero_shot",
) -> tuple[list[str], list[str]]:
    """Names in label order and templates, from the files given (`class_names`, `templates`:
    the settings `section`.class_names / .templates) or the dataset's defaults; `kind`: the
    source type the classes come from: image_folder (ImageNet's folders named, "_" read as
    spaces) and embedded (the scenes' templates) have their own defaults."""
    imagenet = kind == "image_folder" and is_imagenet_style(dataset_classes)
    if class_names:
        names = read_json_list(class_names, f"{section}.class_names")
    elif imagenet:
        names = imagenet_classnames()
    elif kind == "image_folder":
        names = [c.replace("_", " ") for c in dataset_classes]
    else:
        names = list(dataset_classes)
    if len(names) != len(dataset_classes):
        raise ConfigError(
            f"{section}.class_names has {len(names)} names but the dataset has "
            f"{len(dataset_classes)} classes"
        )
    if templates in TEMPLATE_SETS:
        chosen = imagenet_templates(int(templates.removeprefix("imagenet")))
    elif templates:
        chosen = read_json_list(templates, f"{section}.templates")
    elif kind == "embedded":
        from flava.data.scenes import ZERO_SHOT_TEMPLATES

        chosen = list(ZERO_SHOT_TEMPLATES)
    elif imagenet:
        chosen = imagenet_templates(80)
    else:
        chosen = list(DEFAULT_TEMPLATES)
    if not chosen or any("{}" not in t for t in chosen):
        raise ConfigError(f"{section}.templates: every template must contain {{}}")
    return names, chosen
