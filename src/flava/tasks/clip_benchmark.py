"""FLAVA as a model type of LAION's CLIP_benchmark (`clip-benchmark` on PyPI).

CLIP_benchmark loads a model through `clip_benchmark.models.TYPE2FUNC[model_type](model_name=,
pretrained=, cache_dir=, device=)`, which returns (model, transform, tokenizer): a model with
`encode_image(images)` and `encode_text(tokens)`, a PIL -> tensor transform and a callable from
a list of texts to one tensor of token ids. `register` adds `flava` to that table (and to the
list its `--model_type` choices are read from) in this process; nothing in site-packages is
edited. Its own metric code then runs on the embeddings (its top-k accuracy re-expressed, see
`topk_accuracy`): for a FLAVA model, the same as
`FlavaModel.encode_image` / `encode_text` with the eval transform and the tokenizer that
`flava.zero_shot` / `flava.retrieval` use (the attention mask is the ids that are not padding).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from flava.config.common import EvalDataConfig
from flava.model.flava import FlavaModel

MODEL_TYPE = "flava"
"""The --model_type FLAVA is registered as."""
TEXT_MAX_LENGTH = EvalDataConfig.text_max_length
"""Tokens per text: the evaluation commands' default data.text_max_length (77)."""


class BenchmarkModel(nn.Module):
    """A FlavaModel with CLIP_benchmark's calls: encode_image(images), encode_text(ids)."""

    def __init__(self, flava: FlavaModel) -> None:
        super().__init__()
        self.flava = flava
        self.pad_token_id = flava.config.text.pad_token_id

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, P] projected CLS (not normalised)."""
        return self.flava.encode_image(images)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] padded token ids -> [B, P]; padding (the pad id) is masked."""
        return self.flava.encode_text(input_ids, (input_ids != self.pad_token_id).long())


class BenchmarkTransform:
    """PIL image -> normalised pixels [3, S, S] (`flava.image_transform("eval", S)`)."""

    def __init__(self, image_size: int) -> None:
        from flava.data.transforms import image_transform

        self.transform = image_transform("eval", image_size=image_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One image's pixel tensor."""
        return self.transform(image)["pixel_values"]


class BenchmarkTokenizer:
    """Texts -> token ids [N, L] padded to the longest (FLAVA's BERT tokenizer)."""

    def __init__(self, max_length: int = TEXT_MAX_LENGTH) -> None:
        from flava.data.tokenizer import load_tokenizer

        self.tokenizer, self.max_length = load_tokenizer(), max_length

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """The ids of `texts` (one text or a list)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(batch, max_length=self.max_length)["input_ids"]


def load_flava(
    model_name: str = MODEL_TYPE,
    pretrained: str = "",
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[BenchmarkModel, BenchmarkTransform, BenchmarkTokenizer]:
    """CLIP_benchmark's loader for `--model_type flava`: `pretrained` is anything
    `flava.from_pretrained` reads (a model directory, a transformers FLAVA directory, a
    pretrained key); `model_name` only names the results; `cache_dir` is not used (pretrained
    keys use the Hugging Face cache)."""
    from flava.checkpoints.loading import from_pretrained

    flava = from_pretrained(FlavaModel, pretrained)
    model = BenchmarkModel(flava).to(device).eval()
    return model, BenchmarkTransform(flava.config.image.image_size), BenchmarkTokenizer()


def topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk: Any = (1,)) -> list[float]:
    """CLIP_benchmark's `accuracy` (the fraction of rows of logits [N, C] whose label [N] is
    among the k largest, per k) with each count read as a 0-d value: its own turns a 1-element
    array into a float, a TypeError from NumPy 2.4 (LAION-AI/CLIP_benchmark#147)."""
    top = output.topk(max(topk), dim=1, largest=True, sorted=True).indices.t()  # [K, N]
    hits = top.eq(target.view(1, -1).expand_as(top))
    return [float(hits[:k].float().sum().item()) / len(target) for k in topk]


def register() -> Any:
    """Add `flava` to CLIP_benchmark's model types in this process; its cli module. ImportError
    when clip_benchmark (or what its cli imports) is missing. Its top-k accuracy is replaced by
    `topk_accuracy` (the same numbers, under every NumPy 2)."""
    from clip_benchmark import cli, models
    from clip_benchmark.metrics import linear_probe, zeroshot_classification

    zeroshot_classification.accuracy = linear_probe.accuracy = topk_accuracy
    models.TYPE2FUNC.setdefault(MODEL_TYPE, load_flava)
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)  # the list its --model_type choices hold
    if MODEL_TYPE not in cli.MODEL_TYPES:
        raise ImportError("this clip_benchmark release reads no registered model types")
    return cli
