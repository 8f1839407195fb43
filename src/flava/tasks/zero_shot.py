"""Zero-shot image classification by prompt templates (paper section 5; CLIP protocol).

Each class is embedded with every template ("a photo of a {}."), the normalised embeddings are
averaged and renormalised; an image is assigned the class whose embedding is most similar. The
class names and templates of a dataset: `flava.data.prompts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from flava.data.prompts import (  # noqa: F401  (their home was here; importable as before)
    DEFAULT_TEMPLATES,
    imagenet_classnames,
    imagenet_templates,
    is_imagenet_style,
    prompts,
)
from flava.model.flava import FlavaModel
from flava.tasks.retrieval import embed_texts


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
    cfg: DictConfig, dataset_classes: list[str], kind: str | None = None
) -> tuple[list[str], list[str]]:
    """`prompts` of a zero-shot command: its zero_shot.class_names / templates; `kind`: the
    source type the classes come from (default cfg.data.kind)."""
    z = cfg.zero_shot
    return prompts(dataset_classes, kind or cfg.data.kind, z.class_names, z.templates)
