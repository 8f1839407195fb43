"""Zero-shot image classification by prompt templates (paper section 5; CLIP protocol).

Each class is embedded with every template ("a photo of a {}."), the normalised embeddings are
averaged and renormalised; an image is assigned the class whose embedding is most similar.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from flava.model.flava import FlavaModel
from flava.tasks.retrieval import embed_texts

if TYPE_CHECKING:
    from flava.config import ZeroShotRunConfig


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


@torch.no_grad()
def class_embeddings(
    model: FlavaModel,
    tokenizer: Callable[..., dict[str, torch.Tensor]],
    class_names: Sequence[str],
    templates: Sequence[str],
    max_length: int = 77,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[C, P] normalised class embeddings averaged over templates."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every template must contain {} where the class name goes")
    texts = [t.format(name) for name in class_names for t in templates]
    emb = embed_texts(model, tokenizer, texts, max_length=max_length, device=device)
    emb = emb.reshape(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


DEFAULT_TEMPLATES = ["a photo of a {}."]
_WNID = re.compile(r"^n\d{8}$")


def is_imagenet_style(class_dirs: list[str]) -> bool:
    """Whether the class folders are ImageNet-1k's 1000 WordNet ids."""
    return len(class_dirs) == 1000 and all(_WNID.match(c) for c in class_dirs)


def class_names_and_templates(
    cfg: ZeroShotRunConfig, dataset_classes: list[str], kind: str | None = None
) -> tuple[list[str], list[str]]:
    """`prompts` of a zero-shot command: its zero_shot.class_names / templates; `kind`: the
    source type the classes come from (default cfg.data.kind)."""
    z = cfg.zero_shot
    return prompts(dataset_classes, kind or cfg.data.kind, z.class_names, z.templates)


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
    from flava.tasks.run import read_json_list

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
        raise _config_error(
            f"{section}.class_names has {len(names)} names but the dataset has "
            f"{len(dataset_classes)} classes"
        )
    if templates in ("imagenet80", "imagenet7"):
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
        raise _config_error(f"{section}.templates: every template must contain {{}}")
    return names, chosen


def _config_error(message: str) -> Exception:
    from flava.config import ConfigError

    return ConfigError(message)
