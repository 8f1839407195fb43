"""The original release's files (TorchMultimodal's FLAVA) in and out: reading one into our models,
writing one that its `FLAVAForPreTraining.load_state_dict(strict=True)` accepts.

Files in: the published `FLAVAForPreTraining` state dict
(`flava_for_pretraining_unified_text_encoder.pt`, what its key `flava_full` resolves to), its
`FLAVAModel` state dict (`flava_model_unified_text_encoder.pt`), and the Lightning checkpoints its
examples' `train.py` and `finetune.py` write (the same under one more `model.`). Each is read with
`torch.load(weights_only=True)` (a pickle that needs code is refused in one line); its layout is
told by `init_from.detect_layout`, the one key-based detector; the mapping is `tmm_keys`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from flava.checkpoints.io import CheckpointError
from flava.checkpoints.layouts import Layout, init_spelling
from flava.checkpoints.tmm_keys import (
    TmmState,
    config_from_torchmultimodal,
    state_from_torchmultimodal,
    state_to_torchmultimodal,
)
from flava.model.config import FlavaConfig

FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
"""What a TorchMultimodal weight file is called (the release's `.pt`, Lightning's `.ckpt`)."""


def weight_file(path: Path) -> Path:
    """`path` itself, or the one weight file of a directory without config.json."""
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix in FILE_SUFFIXES) if path.is_dir() else []
    if len(found) != 1:
        raise CheckpointError(
            f"{path}: no config.json, and {len(found)} weight files ({', '.join(FILE_SUFFIXES)}) "
            "instead of one; give the file"
        )
    return found[0]


def read_torchmultimodal(
    path: str | os.PathLike, num_heads: int | None = None
) -> tuple[FlavaConfig, TmmState]:
    """A TorchMultimodal FLAVA file (or a directory holding one) in our names, with the config
    its shapes tell (`num_heads`: every encoder's; None: width / 64); one line when the file is
    unsafe, unreadable or of another layout."""
    from flava.checkpoints.init_from import detect_layout, read_source

    where = weight_file(Path(path).expanduser())
    state, config = read_source(str(where))
    try:
        layout = detect_layout(state, config, str(where))
    except CheckpointError:
        first = next(iter(state), "none")
        raise CheckpointError(
            f"{where}: its keys (e.g. {first!r}) are in no layout this reads (ours, "
            "transformers', TorchMultimodal's FLAVA)"
        ) from None
    if layout is not Layout.torchmultimodal:
        raise CheckpointError(
            f"{where}: a {init_spelling(layout)} weight file, not TorchMultimodal's FLAVA; give "
            "its directory with config.json"
        )
    tmm = state_from_torchmultimodal(state, str(where))
    return config_from_torchmultimodal(tmm, str(where), num_heads), tmm


def build_from_torchmultimodal(
    config: FlavaConfig, tmm: TmmState, modality: str | None = None, activation: str = "relu"
) -> nn.Module:
    """Our model of the file's kind, loaded strictly: FlavaForPreTraining (with its codebook),
    FlavaModel, or FlavaClassifier (`modality`: the encoder the head reads, which the weights
    cannot tell; `activation`: the classifier's, TorchMultimodal's default ReLU)."""
    from flava.model.classifier import FlavaClassifier
    from flava.model.codebook import ImageCodebook
    from flava.model.flava import FlavaForPreTraining, FlavaModel

    if tmm.kind == "FLAVAForPreTraining":
        codebook = ImageCodebook(config.codebook) if tmm.codebook else None
        model: nn.Module = FlavaForPreTraining(config, codebook=codebook)
        held = {f"codebook.{k}": v for k, v in tmm.codebook.items()}
        _load_strict(model, {**tmm.state, **held}, tmm.where)
        return model
    flava = FlavaModel(config)
    _load_strict(flava, {k.removeprefix("flava."): v for k, v in tmm.state.items()}, tmm.where)
    if tmm.kind == "FLAVAModel":
        return flava
    if modality is None:
        raise CheckpointError(
            f"{tmm.where}: a TorchMultimodal classifier: give the encoder its head reads "
            "(--modality text, image or multimodal); the weights cannot tell"
        )
    outputs, hidden = tmm.classifier["3.weight"].shape
    dropout = 0.5 if tmm.classifier_dropout else 0.0  # TorchMultimodal's default rate
    head = FlavaClassifier(flava, modality, outputs, hidden, activation, dropout, pooling="cls")
    head.head.load_state_dict(tmm.classifier, strict=True)
    return head


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict(strict=True) with a one-line refusal."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()[:200]
        raise CheckpointError(f"{where}: the weights do not fit our model ({first})") from None


def export_torchmultimodal(module: nn.Module, path: str | os.PathLike) -> Path:
    """torch.save `module` (FlavaForPreTraining with its codebook, or FlavaModel) as the state
    dict TorchMultimodal's FLAVAForPreTraining (FLAVAModel) loads with strict=True."""
    from flava.model.flava import FlavaForPreTraining, FlavaModel

    out = Path(path).expanduser()
    if out.is_dir():
        raise CheckpointError(f"{out}: is a directory; give the .pt file to write")
    if isinstance(module, FlavaForPreTraining):
        if module.codebook is None:
            raise CheckpointError(
                "the model has no image codebook, which TorchMultimodal's FLAVAForPreTraining "
                "holds (image_codebook.encoder.*); convert one that has it"
            )
        state = {k: v for k, v in module.state_dict().items() if not k.startswith("codebook.")}
        tmm = state_to_torchmultimodal(state, module.codebook.state_dict())
    elif isinstance(module, FlavaModel):
        tmm = state_to_torchmultimodal(module.state_dict())
    else:
        raise CheckpointError(f"cannot write {type(module).__name__} in TorchMultimodal's layout")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save({k: v.detach().contiguous().cpu() for k, v in tmm.items()}, partial)
    partial.replace(out)
    return out
