"""Loading and saving over the model classes: our layout (`config.json` + `model.safetensors`),
transformers' FLAVA both ways, the original release's (TorchMultimodal) files and OpenAI's
`encoder.pkl` in, pretrained keys resolved; the layout of a directory told from its config.json.

Our directory layout: `config.json` = {"flava_format": 1, "class": ..., "config": {...},
"codebook": bool} and `model.safetensors` holding the module's own `state_dict()` keys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from flava.checkpoints.hf_keys import (
    flava_config_from_transformers,
    flava_config_to_transformers,
    flava_state_from_transformers,
    flava_state_to_transformers,
)
from flava.checkpoints.io import (
    CheckpointError,
    load_weights,
    read_json,
    save_weights,
    write_json,
)
from flava.checkpoints.layouts import Layout
from flava.checkpoints.pretrained import (
    CODEBOOK_FOR_KEY,
    DALLE_KEY,
    PRETRAINED_KEYS,
    resolve_dalle,
    resolve_pretrained,
)
from flava.model.codebook import ImageCodebook
from flava.model.config import CodebookConfig, FlavaConfig
from flava.model.flava import FlavaForPreTraining, FlavaModel

__all__ = [
    "config_layout",
    "directory_layout",
    "export_transformers",
    "from_pretrained",
    "load_flava_state",
    "save_pretrained",
]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
M = TypeVar("M", bound=nn.Module)


def _class_name(module: nn.Module) -> str:
    return type(module).__name__


def save_pretrained(
    module: nn.Module, directory: str | os.PathLike, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Write `config.json` + `model.safetensors` (FlavaModel, FlavaForPreTraining, codebook);
    `state`: the weights to write instead of `module.state_dict()` (e.g. gathered shards)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(module, ImageCodebook):
        config: dict[str, Any] = module.config.__dict__.copy()
        has_codebook = True
    elif isinstance(module, FlavaModel | FlavaForPreTraining):
        config = module.config.to_dict()
        has_codebook = getattr(module, "codebook", None) is not None
    else:
        raise TypeError(f"save_pretrained does not know how to save {_class_name(module)}")
    save_weights(out / "model.safetensors", module.state_dict() if state is None else state)
    write_json(
        out / "config.json",
        {
            "flava_format": FORMAT_VERSION,
            "class": _class_name(module),
            "config": config,
            "codebook": has_codebook,
        },
    )


def resolve_source(name_or_path: str | os.PathLike) -> tuple[Path, str | None]:
    """(local path, pretrained key or None) of a path, the codebook key `dalle` or a pretrained
    key (from the cache, or fetched when the hub answers); else one line."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return path, None
    if text == DALLE_KEY:
        return resolve_dalle(), None
    if text in PRETRAINED_KEYS:
        return resolve_pretrained(text), text
    raise CheckpointError(
        f"{text}: no such file or directory, and not a pretrained key "
        f"(known keys: {', '.join(PRETRAINED_KEYS)}; codebooks also {DALLE_KEY})"
    )


_CODEBOOK_TYPE = "flava_image_codebook"
"""transformers' FlavaImageCodebook's config.json `model_type`."""


def config_layout(config: dict[str, Any], where: Path) -> Layout:
    """Layout.flava or Layout.transformers, from a checkpoint's config.json (`where`); one-line
    CheckpointError for any other."""
    if "flava_format" in config:
        return Layout.flava
    model_type = config.get("model_type")
    if model_type in ("flava", _CODEBOOK_TYPE):
        return Layout.transformers
    raise CheckpointError(
        f"{where}: config.json is neither a flava checkpoint nor a transformers FLAVA one "
        f"(model_type={model_type!r})"
    )


def directory_layout(directory: Path) -> tuple[Layout, str]:
    """(Layout.flava or Layout.transformers, class name) of a checkpoint directory, read from its
    config.json (one-line CheckpointError when it is missing or damaged)."""
    raw = read_json(directory / "config.json")
    if "flava_format" in raw:
        return Layout.flava, raw.get("class", "FlavaForPreTraining")
    if raw.get("model_type") == _CODEBOOK_TYPE:
        return Layout.transformers, "ImageCodebook"
    architectures = raw.get("architectures") or []
    return Layout.transformers, "FlavaModel" if architectures == [
        "FlavaModel"
    ] else "FlavaForPreTraining"


def load_flava_state(
    directory: Path,
) -> tuple[FlavaConfig, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, list[str]]:
    """(config, state in FlavaForPreTraining naming, codebook state or None, unplaced keys)."""
    from flava.checkpoints.dalle import codebook_state_from_transformers

    raw = read_json(directory / "config.json")
    layout = config_layout(raw, directory / "config.json")
    state = load_weights(directory)
    if layout is Layout.flava:
        if raw.get("class") == "ImageCodebook":
            raise CheckpointError(f"{directory}: holds an ImageCodebook, not a FLAVA model")
        config = FlavaConfig.from_dict(raw["config"])
        if raw.get("class") == "FlavaModel":
            state = {f"flava.{k}": v for k, v in state.items()}
        own = {k[len("codebook.") :]: v for k, v in state.items() if k.startswith("codebook.")}
        state = {k: v for k, v in state.items() if not k.startswith("codebook.")}
        return config, state, own or None, []
    if raw.get("model_type") == _CODEBOOK_TYPE:
        raise CheckpointError(f"{directory}: holds an image codebook, not a FLAVA model")
    config = flava_config_from_transformers(raw)
    mapped, hf_codebook, unplaced = flava_state_from_transformers(state)
    codebook = None
    if hf_codebook:
        codebook, more = codebook_state_from_transformers(hf_codebook)
        unplaced += [f"image_codebook.{k}" for k in more]
    return config, mapped, codebook, unplaced


def _load_any(
    path: Path,
) -> tuple[FlavaConfig, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, list[str]]:
    """`load_flava_state` of a directory with config.json; a weight file (or a directory without
    config.json holding one) is the original release's (TorchMultimodal), told from its keys."""
    if path.is_dir() and (path / "config.json").is_file():
        return load_flava_state(path)
    from flava.checkpoints.torchmultimodal import read_torchmultimodal

    config, tmm = read_torchmultimodal(path)
    for note in tmm.notes:
        log.info("%s: %s", path, note)
    return config, tmm.state, tmm.codebook or None, tmm.unplaced


def _load_codebook(directory_or_file: Path) -> tuple[CodebookConfig, dict[str, torch.Tensor]]:
    from flava.checkpoints.dalle import (
        codebook_config_from_transformers,
        codebook_state_from_transformers,
        load_openai_encoder,
    )

    if directory_or_file.is_file():
        return load_openai_encoder(directory_or_file)
    raw = read_json(directory_or_file / "config.json")
    layout = config_layout(raw, directory_or_file / "config.json")
    state = load_weights(directory_or_file)
    if layout is Layout.flava and raw.get("class") == "ImageCodebook":
        return CodebookConfig(**raw["config"]), state
    if layout is Layout.flava:
        config = FlavaConfig.from_dict(raw["config"]).codebook
        cb = {k[len("codebook.") :]: v for k, v in state.items() if k.startswith("codebook.")}
        if not cb:
            raise CheckpointError(f"{directory_or_file}: this checkpoint has no image codebook")
        return config, cb
    if raw.get("model_type") == _CODEBOOK_TYPE:
        mapped, unplaced = codebook_state_from_transformers(state)
        _report(directory_or_file, unplaced, [])
        return codebook_config_from_transformers(raw), mapped
    config = flava_config_from_transformers(raw).codebook
    cb = {k: v for k, v in state.items() if k.startswith("image_codebook.")}
    if not cb:
        raise CheckpointError(f"{directory_or_file}: this checkpoint has no image codebook")
    mapped, unplaced = codebook_state_from_transformers(cb)
    _report(directory_or_file, unplaced, [])
    return config, mapped


def _report(where: Path, unplaced: list[str], missing: list[str]) -> None:
    if unplaced:
        log.warning("%s: %d keys could not be placed: %s", where, len(unplaced), unplaced)
    if missing:
        log.warning("%s: %d keys missing, left initialised: %s", where, len(missing), missing)


def from_pretrained(
    cls: type[M],
    name_or_path: str | os.PathLike,
    strict: bool = True,
    codebook: str | os.PathLike | None = None,
) -> M:
    """Build `cls` and load weights from our layout, the transformers layout, the original
    release's (TorchMultimodal) .pt / .ckpt file or a pretrained key.

    `strict`: fail when a weight the model needs is absent (pretraining heads may be absent
    when loading FlavaForPreTraining from an encoder-only checkpoint; they are then reported
    and left initialised). `codebook` (FlavaForPreTraining only): a codebook source to use
    instead of the one in the checkpoint (directory, encoder.pkl or pretrained key).
    """
    path, key = resolve_source(name_or_path)
    if cls is ImageCodebook or issubclass(cls, ImageCodebook):
        if key is not None and key in CODEBOOK_FOR_KEY:
            path = resolve_pretrained(CODEBOOK_FOR_KEY[key])
        cb_config, cb_weights = _load_codebook(path)
        model = cls(cb_config)
        model.load_state_dict(cb_weights, strict=True)
        return model
    config, state, cb_state, unplaced = _load_any(path)
    if issubclass(cls, FlavaModel):
        model = cls(config)
        own = {k[len("flava.") :]: v for k, v in state.items() if k.startswith("flava.")}
        _load(model, own, path, strict, unplaced, optional=())
        return model
    if not issubclass(cls, FlavaForPreTraining):
        raise TypeError(f"from_pretrained does not know how to build {cls.__name__}")
    cb_module: ImageCodebook | None = None
    if codebook is not None:
        cb_module = from_pretrained(ImageCodebook, codebook)
    elif cb_state is not None:
        cb_module = ImageCodebook(config.codebook)
        cb_module.load_state_dict(cb_state, strict=True)
    elif key is not None and key in CODEBOOK_FOR_KEY:
        cb_module = from_pretrained(ImageCodebook, CODEBOOK_FOR_KEY[key])
    if cb_module is not None:
        config.codebook = cb_module.config
    model = cls(config, codebook=cb_module)
    heads = ("mim_head.", "mlm_head.", "mmm_image_head.", "mmm_text_head.", "itm_head.")
    _load(model, state, path, strict, unplaced, optional=heads)
    return model


def _load(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    where: Path,
    strict: bool,
    unplaced: list[str],
    optional: tuple[str, ...],
) -> None:
    expected = {k for k in model.state_dict() if not k.startswith("codebook.")}
    shapes = model.state_dict()
    state = {  # saves from before logit_scale became a 1-element vector hold it 0-d
        k: v.reshape(shapes[k].shape) if k.endswith("logit_scale") and k in shapes else v
        for k, v in state.items()
    }
    wrong = [k for k in state if k in shapes and shapes[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{where}: {k} has shape {tuple(state[k].shape)} but the model expects "
            f"{tuple(shapes[k].shape)} ({len(wrong)} mismatched tensors)"
        )
    extra = sorted(set(state) - expected)
    missing = sorted(expected - set(state))
    hard_missing = [k for k in missing if not k.startswith(optional)]
    if strict and hard_missing:
        raise CheckpointError(
            f"{where}: {len(hard_missing)} weights missing from the checkpoint, e.g. "
            f"{hard_missing[0]} (pass strict=False to leave them initialised)"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    _report(where, unplaced + extra, missing)


def export_transformers(module: nn.Module, directory: str | os.PathLike) -> None:
    """Write `module` in the transformers layout (config.json + model.safetensors)."""
    from flava.checkpoints.dalle import (
        codebook_config_to_transformers,
        codebook_state_to_transformers,
    )

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = module.state_dict()
    if isinstance(module, ImageCodebook):
        config = codebook_config_to_transformers(module.config)
        config["architectures"] = ["FlavaImageCodebook"]
        hf_state = codebook_state_to_transformers(state)
    elif isinstance(module, FlavaModel):
        config = flava_config_to_transformers(module.config)
        config.update(architectures=["FlavaModel"], init_codebook=False)
        hf_state = flava_state_to_transformers(state)
    elif isinstance(module, FlavaForPreTraining):
        config = flava_config_to_transformers(module.config)
        hf_state = flava_state_to_transformers(state)
        if module.codebook is not None:
            cb = codebook_state_to_transformers(module.codebook.state_dict())
            hf_state.update({f"image_codebook.{k}": v for k, v in cb.items()})
            config["image_codebook_config"] = codebook_config_to_transformers(
                module.codebook.config
            )
        else:
            config["init_codebook"] = False
    else:
        raise TypeError(f"cannot export {type(module).__name__} to the transformers layout")
    save_weights(out / "model.safetensors", hf_state)
    write_json(out / "config.json", config)
