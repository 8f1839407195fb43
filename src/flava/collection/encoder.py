"""The model at work: images and texts -> embeddings, in the precision asked for.

`Encoder` holds a `FlavaModel` in eval mode on its device, in fp32 or with bf16 weights (bf16
runs every product in bf16; benchmarks/embed.py measures its speed and its cosine to fp32), its
eval image transform and the tokenizer. Texts are embedded longest first in batches padded
only to their own longest text (`texts`): sorting a shard's captions by length leaves far less
padding than batches in record order. Embeddings come back as float32 [N, P], L2-normalised
unless `normalize` is off.

With `compile`, both encoders run through `torch.compile` (TorchInductor, `freezing`: the
weights become constants of the graph, so the CPU's linear layers run on prepacked oneDNN
weights). Images are compiled for one batch shape: a smaller batch (a shard's last) is padded
with zeros to the largest seen, and the padding rows dropped. Texts, whose padded length varies
from batch to batch, are compiled for dynamic shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from flava.config import ConfigError

log = logging.getLogger("flava")

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""The precisions an `Encoder` computes in, by their setting's spelling."""


def native_bf16(device: torch.device) -> bool:
    """Whether `device` has native bf16 units (Ampere+ GPUs; CPUs with AVX512-BF16 or AMX)."""
    from flava.training.precision import cpu_features

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).major >= 8
    return device.type == "cpu" and "bf16" in cpu_features()[1]


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the device has native bf16, else fp32; others as they are."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISION_DTYPES:
        raise ConfigError(f"precision={precision!r} is invalid: use auto, fp32 or bf16")
    return precision


class Encoder:
    """A FlavaModel ready to embed images and texts (see the module doc)."""

    def __init__(
        self,
        model: Any,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        text_max_length: int = 77,
        normalize: bool = True,
        compile: bool = False,
    ) -> None:
        from flava.data.tokenizer import load_tokenizer
        from flava.data.transforms import image_transform

        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = PRECISION_DTYPES[self.precision]
        self.model = model.to(self.device, self.dtype).eval()
        positions = model.config.text.max_position_embeddings
        if text_max_length > positions:
            raise ConfigError(
                f"text_max_length={text_max_length} is more than the text encoder's "
                f"{positions} positions; set data.text_max_length <= {positions}"
            )
        self.text_max_length = text_max_length
        self.normalize = normalize
        self.image_size = model.config.image.image_size
        self.dim = model.config.projection_dim
        self.transform = image_transform("eval", image_size=self.image_size)
        self.tokenizer = load_tokenizer()
        self.compiled = compile
        self._rows = 0  # the image batch the compiled encoder runs (the largest seen)
        if compile:
            frozen: dict[str, str | int | bool | Callable[..., Any]] = {"freezing": True}
            self._image = torch.compile(model.encode_image, options=frozen, dynamic=False)
            self._text = torch.compile(model.encode_text, options=frozen, dynamic=True)

    def _out(self, emb: torch.Tensor) -> torch.Tensor:
        """Float32 on the CPU, normalised when asked."""
        emb = emb.float()
        return (F.normalize(emb, dim=-1) if self.normalize else emb).cpu()

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """One PIL image (any mode) as the encoder's input [3, S, S]."""
        return self.transform(image)["pixel_values"]

    @torch.inference_mode()
    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] pixels -> embeddings [B, P]."""
        if len(pixels) == 0:
            return torch.empty(0, self.dim)
        return self._out(self.encode_image(pixels))  # [B, P]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's projected CLS of [B, 3, S, S] pixels [B, P] (not normalised)."""
        pixels = pixels.to(self.device, self.dtype, non_blocking=True)
        if not self.compiled:
            return self.model.encode_image(pixels)
        count, self._rows = len(pixels), max(self._rows, len(pixels))
        padding = pixels.new_zeros(self._rows - count, *pixels.shape[1:])
        return self._image(torch.cat([pixels, padding]))[:count]

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The model's projected CLS of [B, L] token ids and padding mask [B, P]."""
        encode = self._text if self.compiled else self.model.encode_text
        return encode(ids.to(self.device), mask.to(self.device))

    @torch.inference_mode()
    def texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embeddings [N, P] of `texts` in their order, embedded longest first in batches padded
        to their own longest text."""
        if len(texts) == 0:
            return torch.empty(0, self.dim)
        tok = self.tokenizer(list(texts), max_length=self.text_max_length)
        ids, mask = tok["input_ids"], tok["attention_mask"]  # [N, L]
        lengths = mask.sum(dim=1)  # [N]
        order = torch.argsort(lengths, descending=True, stable=True)
        out = torch.empty(len(texts), self.dim)
        for chunk in order.split(batch_size):
            n = int(lengths[chunk].max())
            out[chunk] = self._out(self.encode_text(ids[chunk, :n], mask[chunk, :n]))  # [b, P]
        return out

    def image_query(self, image: Image.Image) -> torch.Tensor:
        """One image's embedding [P]."""
        return self.images(self.pixels(image)[None])[0]

    def text_query(self, text: str) -> torch.Tensor:
        """One text's embedding [P]."""
        return self.texts([text])[0]


class OnnxEncoder(Encoder):
    """The same embeddings from the ONNX export of the model (`flava.checkpoints.onnx`) on
    onnxruntime, in fp32: `embed.runtime=onnx`."""

    def __init__(
        self,
        directory: str,
        text_max_length: int = 77,
        normalize: bool = True,
        providers: list[str] | None = None,
    ) -> None:
        from flava.checkpoints import CheckpointError
        from flava.checkpoints.onnx import OnnxEncoders
        from flava.data.tokenizer import load_tokenizer
        from flava.data.transforms import image_transform

        try:
            self.onnx = OnnxEncoders(directory, providers)
        except (CheckpointError, OSError) as exc:
            if "not installed" in str(exc):
                raise ConfigError(f"embed.runtime=onnx: {exc}") from None
            raise ConfigError(
                f"embed.onnx_dir={directory}: {str(exc).splitlines()[0]}; write it with "
                "python -m flava.convert MODEL DIR --to onnx"
            ) from None
        if text_max_length > self.onnx.max_length:
            raise ConfigError(
                f"text_max_length={text_max_length} is more than the text encoder's "
                f"{self.onnx.max_length} positions; set data.text_max_length <= "
                f"{self.onnx.max_length}"
            )
        self.device, self.precision, self.dtype = torch.device("cpu"), "fp32", torch.float32
        self.text_max_length, self.normalize = text_max_length, normalize
        self.image_size, self.dim = self.onnx.image_size, self.onnx.projection_dim
        self.transform = image_transform("eval", image_size=self.image_size)
        self.tokenizer = load_tokenizer()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """onnxruntime's image embeddings [B, P]."""
        return torch.from_numpy(self.onnx.encode_image(pixels.numpy()))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """onnxruntime's text embeddings [B, P]."""
        return torch.from_numpy(self.onnx.encode_text(ids.numpy(), mask.numpy()))


def load_model(pretrained_model_key: str | None, preset: str, seed: int = 0) -> Any:
    """The FlavaModel of a model section (`flava.tasks.run.load_flava`: from_pretrained, or the
    preset seeded with `seed`)."""
    from flava.config import ModelConfig
    from flava.tasks.run import load_flava

    section = ModelConfig(preset=preset, pretrained_model_key=pretrained_model_key)
    return load_flava(section, seed)
