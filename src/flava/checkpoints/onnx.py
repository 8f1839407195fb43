"""FLAVA's image and text encoders with their projections as ONNX graphs, and their runtime.

`export_onnx(model, directory)` writes the ONNX layout (`Layout.onnx`, `flava.convert SRC DST
--to onnx`): `image_encoder.onnx` (normalised pixels [B, 3, S, S] -> [B, P], what
`FlavaModel.encode_image` returns: the projected CLS, not normalised), `text_encoder.onnx`
(`input_ids`, `attention_mask` [B, L] int64 -> [B, P], `FlavaModel.encode_text`) with dynamic
batch and text-length axes, and `onnx.json` (file names, input names, image size, text length
limit, pad id, projection size, logit scale, opset, the model config).

`OnnxEncoders(directory)` runs them on onnxruntime with the same calls on numpy arrays,
`encode_image(pixels)` and `encode_text(input_ids, attention_mask)`; its embeddings equal the
PyTorch model's to 1e-4 (tests/checkpoints/test_onnx.py at tiny shapes,
benchmarks/onnx_vs_pytorch.py at flava_full). Preprocessing is the PyTorch side's:
`flava.image_transform("eval", image_size)` and `flava.load_tokenizer()`.

The export uses torch's TorchScript-based exporter (`dynamo=False`): the one that works from
the torch floor (2.6) to 2.14 without onnxscript; it needs the `onnx` package, the runtime
`onnxruntime` (`pip install 'flava[onnx]'`).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flava.checkpoints.io import CheckpointError, read_json, write_json
from flava.model.flava import FlavaModel

ONNX_FORMAT = 1
"""onnx.json's `flava_onnx_format`."""
OPSET = 17
"""The ONNX opset written (LayerNormalization is an operator from 17)."""
META_FILE = "onnx.json"
IMAGE_FILE, TEXT_FILE = "image_encoder.onnx", "text_encoder.onnx"
IMAGE_INPUTS, TEXT_INPUTS, OUTPUT = ["pixel_values"], ["input_ids", "attention_mask"], "embedding"
INSTALL = "pip install 'flava[onnx]' (or: pip install onnx onnxruntime)"


def require(*packages: str) -> None:
    """One-line CheckpointError naming the pip install when a package is missing."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise CheckpointError(f"ONNX needs {' and '.join(missing)}, not installed: {INSTALL}")


class _ImageTower(nn.Module):
    """`encode_image` as a module of one input (what the exporter traces)."""

    def __init__(self, model: FlavaModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, P]."""
        return self.model.encode_image(pixel_values)


class _TextTower(nn.Module):
    """`encode_text` with the padding mask as an input."""

    def __init__(self, model: FlavaModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L], [B, L] -> [B, P]."""
        return self.model.encode_text(input_ids, attention_mask)


def flava_of(model: nn.Module) -> FlavaModel:
    """The FlavaModel of a FlavaModel, FlavaForPreTraining or fine-tuned classifier (`.flava`);
    one line for anything else (an image codebook)."""
    flava = getattr(model, "flava", model)
    if not isinstance(flava, FlavaModel):
        raise CheckpointError(
            f"ONNX export takes a FLAVA model (its image and text encoders); got "
            f"{type(model).__name__}"
        )
    return flava


def probe_inputs(config: Any, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels [batch, C, S, S] and token ids + mask [batch, L] (the last row padded
    after half its length) at a model config's shapes."""
    gen = torch.Generator().manual_seed(seed)
    size, channels = config.image.image_size, config.image.num_channels
    length = min(16, config.text.max_position_embeddings)
    ids = torch.randint(1, config.text.vocab_size, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length // 2 :] = 0
    pixels = torch.randn(batch, channels, size, size, generator=gen)
    return {"pixel_values": pixels, "input_ids": ids * mask, "attention_mask": mask}


def _export(
    tower: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, names: list[str]
) -> None:
    """Trace `tower` on `inputs` into `path` with a dynamic batch axis (text: and length)."""
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in [*names, OUTPUT]}
    if names == TEXT_INPUTS:
        axes.update({n: {0: "batch", 1: "length"} for n in names})
    with warnings.catch_warnings():  # the exporter's deprecation notice and expected trace notes
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            tower,
            inputs,
            str(path),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _metadata(flava: FlavaModel) -> dict[str, Any]:
    config = flava.config
    return {
        "flava_onnx_format": ONNX_FORMAT,
        "opset": OPSET,
        "image": {"file": IMAGE_FILE, "inputs": IMAGE_INPUTS, "output": OUTPUT},
        "text": {"file": TEXT_FILE, "inputs": TEXT_INPUTS, "output": OUTPUT},
        "image_size": config.image.image_size,
        "num_channels": config.image.num_channels,
        "max_length": config.text.max_position_embeddings,
        "pad_token_id": config.text.pad_token_id,
        "projection_dim": config.projection_dim,
        "logit_scale": float(flava.logit_scale.detach().float().item()),
        "config": config.to_dict(),
    }


def export_onnx(model: nn.Module, directory: str | os.PathLike) -> dict[str, float]:
    """Write the image and text encoders of `model` (FlavaModel, FlavaForPreTraining or a
    fine-tuned classifier) to `directory` as ONNX; returns max |onnxruntime - PyTorch| of each
    on a probe batch ({"image": ..., "text": ...})."""
    require("onnx", "onnxruntime")
    flava = flava_of(model)
    weight = next(flava.parameters())
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        flava = copy.deepcopy(flava).to("cpu", torch.float32)
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    probe = probe_inputs(flava.config)
    was_training = flava.training
    flava.eval()
    try:
        with torch.no_grad():  # no fused autograd functions: the plain modules run
            pixels, texts = (probe["pixel_values"],), (probe["input_ids"], probe["attention_mask"])
            _export(_ImageTower(flava), pixels, out / IMAGE_FILE, IMAGE_INPUTS)
            _export(_TextTower(flava), texts, out / TEXT_FILE, TEXT_INPUTS)
            expected = {"image": flava.encode_image(*pixels), "text": flava.encode_text(*texts)}
    finally:
        flava.train(was_training)
    write_json(out / META_FILE, _metadata(flava))
    encoders = OnnxEncoders(out)
    ids, mask = (t.numpy() for t in texts)
    got = {
        "image": encoders.encode_image(pixels[0].numpy()),
        "text": encoders.encode_text(ids, mask),
    }
    return {k: float(np.abs(got[k] - expected[k].numpy()).max()) for k in got}


class OnnxEncoders:
    """FLAVA's image and text encoders on onnxruntime, from a directory `export_onnx` wrote:
    `encode_image` / `encode_text` as `FlavaModel`'s, on numpy arrays."""

    def __init__(
        self,
        directory: str | os.PathLike,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        """`providers`: onnxruntime execution providers (default CPU); `threads`: intra-op
        threads (default onnxruntime's)."""
        require("onnxruntime")
        import onnxruntime as ort

        root = Path(directory).expanduser()
        meta = read_json(root / META_FILE)
        if meta.get("flava_onnx_format") != ONNX_FORMAT:
            raise CheckpointError(f"{root / META_FILE}: not a flava ONNX export")
        self.meta = meta
        self.image_size: int = meta["image_size"]
        self.num_channels: int = meta["num_channels"]
        self.max_length: int = meta["max_length"]
        self.projection_dim: int = meta["projection_dim"]
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        chosen = providers or ["CPUExecutionProvider"]

        def session(part: str) -> Any:
            return ort.InferenceSession(str(root / meta[part]["file"]), options, providers=chosen)

        self.image_session, self.text_session = session("image"), session("text")

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, C, S, S] normalised pixels -> [B, P] float32 embeddings (not normalised)."""
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        shape = (self.num_channels, self.image_size, self.image_size)
        if pixels.ndim != 4 or pixels.shape[1:] != shape:
            raise ValueError(
                f"pixel_values must be [B, {', '.join(map(str, shape))}], got {list(pixels.shape)}"
                f"; use flava.image_transform('eval', image_size={self.image_size})"
            )
        if pixels.shape[0] == 0:
            return np.zeros((0, self.projection_dim), np.float32)
        return self.image_session.run(None, {IMAGE_INPUTS[0]: pixels})[0]

    def encode_text(
        self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None
    ) -> np.ndarray:
        """[B, L] token ids (+ [B, L] 1/0 padding mask; default all ones) -> [B, P] float32."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        mask = np.ascontiguousarray(mask, dtype=np.int64)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [B, L], got {list(ids.shape)} and "
                f"{list(mask.shape)}"
            )
        if ids.shape[1] > self.max_length:
            raise ValueError(
                f"text length {ids.shape[1]} exceeds the model's {self.max_length} positions; "
                "truncate with the tokenizer's max_length"
            )
        if ids.shape[0] == 0:
            return np.zeros((0, self.projection_dim), np.float32)
        return self.text_session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
