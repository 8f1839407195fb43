"""Zero-shot image classification by prompt templates (paper section 5; CLIP protocol).

Each class is embedded with every template ("a photo of a {}."), the normalised embeddings are
averaged and renormalised; an image is assigned the class whose embedding is most similar. The
class names and templates of a dataset: `flava.data.prompts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

# (their home was here: importable from here as before)
from flava.data.prompts import DEFAULT_TEMPLATES as DEFAULT_TEMPLATES
from flava.data.prompts import imagenet_classnames as imagenet_classnames
from flava.data.prompts import imagenet_templates as imagenet_templates
from flava.data.prompts import is_imagenet_style as is_imagenet_style
from flava.data.prompts import prompts
from flava.model.flava import FlavaModel
from flava.tasks.retrieval import embed_texts

if TYPE_CHECKING:
    from flava.config import ZeroShotRunConfig


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


def class_names_and_templates(
    cfg: ZeroShotRunConfig, dataset_classes: list[str], kind: str | None = None
) -> tuple[list[str], list[str]]:
    """`prompts` of a zero-shot command: its zero_shot.class_names / templates; `kind`: the
    source type the classes come from (default cfg.data.kind)."""
    z = cfg.zero_shot
    return prompts(dataset_classes, kind or cfg.data.kind, z.class_names, z.templates)
