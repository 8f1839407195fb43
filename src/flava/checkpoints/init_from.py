"""`model.init_from`: parts of a built model initialised from pretrained (unimodal) checkpoints.

FLAVA is not pretrained from scratch: the paper starts its image encoder from DINO ViT-B/16 and
its text encoder from unimodal MLM pretraining. An entry names a `part` (image_encoder,
text_encoder, multimodal_encoder or a parameter prefix such as `mim_head`) and a `path` (a
directory, a weight file, one of our run directories, or a hub id, read from the cache first).
The layout is told from the keys, or given:

- `vit`: one transformers encoder (ViTModel, DINO's `facebook/dino-vitb16`, FlavaImageModel,
  FlavaTextModel), mapped by the transformers-FLAVA key mapping, whose encoders share its names;
- `timm`: timm's VisionTransformer (`timm/vit_base_patch16_224.dino`); its fused qkv is ours;
- `flava_hf`: transformers FlavaModel / FlavaForPreTraining;
- `flava`: ours (`save_pretrained`, a run's `model/`, a Lightning checkpoint's state);
- `torchmultimodal`: the original release (TorchMultimodal's FLAVAForPreTraining / FLAVAModel,
  bare or in its examples' Lightning checkpoints), mapped by `tmm_keys`.

Width, depth and head count must match (refused in one line naming both); image position
embeddings of another grid are resized bicubically, the class token's position kept, as the
image encoder itself does at run time. The model keeps its LayerNorm epsilon; a differing source
epsilon is noted in the report. A post-LayerNorm BERT is refused: its layers cannot be placed in
FLAVA's pre-LayerNorm encoder. Each entry returns an `InitReport`; `format_init_reports` is the
start-up table of filled, unfilled and unused keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flava.checkpoints.hf_keys import flava_state_from_transformers, flava_state_to_transformers
from flava.checkpoints.io import (
    WEIGHT_FILES,
    CheckpointError,
    load_weight_file,
    load_weights,
    read_json,
)
from flava.checkpoints.layouts import INIT_FROM_SPELLINGS, Layout, from_init_spelling, init_spelling
from flava.checkpoints.pretrained import resolve_hub
from flava.checkpoints.tmm_keys import state_from_torchmultimodal, tmm_prefix
from flava.model.flava import FlavaModel

LAYOUTS = tuple(INIT_FROM_SPELLINGS)
"""`layout:` as an entry spells it (`layouts.INIT_FROM_SPELLINGS`)."""
ENCODERS = ("image_encoder", "text_encoder", "multimodal_encoder")
TIMM_LAYER_NORM_EPS = 1e-6
"""timm's ViTs build their LayerNorms with eps 1e-6 (their weights do not say)."""
TIMM_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16, "giant": 16}
"""Attention heads of timm's named ViT sizes (`vit_base_patch16_224.dino`: base), for a
checkpoint whose config.json has no `model_args`."""
_TIMM_SIZE = re.compile(r"(?:^|/)(?:vit|deit3?)_(tiny|small|base|large|huge|giant)_")

_HF_NAME = {
    "image_encoder": "image_model",
    "text_encoder": "text_model",
    "multimodal_encoder": "multimodal_model",
}
_CONFIG_NAME = {
    "image_encoder": "image",
    "text_encoder": "text",
    "multimodal_encoder": "multimodal",
}
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_OURS = re.compile(r"^(.*?)(image|text|multimodal)_encoder\.encoder\.layers\.\d+\.")
_HF_FLAVA = re.compile(r"^(flava\.)?(image|text|multimodal)_model\.encoder\.layer\.\d+\.")
_BERT = re.compile(r"(^|\.)encoder\.layer\.\d+\.attention\.output\.LayerNorm\.weight$")
_VIT = re.compile(r"^(.*?)encoder\.layer\.\d+\.layernorm_before\.weight$")
_TIMM = re.compile(r"^(.*?)blocks\.\d+\.attn\.qkv\.weight$")
_WRAPPERS = ("flava", "vit", "model", "module", "backbone")
_LAYER = re.compile(r"\.encoder\.layers\.(\d+)\.")
_TIMM_KEYS = {  # timm suffix -> ours (after "flava.image_encoder.")
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "patch_embed.proj.weight": "patch_embed.weight",
    "patch_embed.proj.bias": "patch_embed.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.")
_TIMM_UNSUPPORTED = {  # parts of some timm ViTs that change the computation; FLAVA has none
    r"\.ls[12]\.": "layer scale",
    r"\.attn\.[qk]_norm\.": "query/key norms",
    r"\.(attn|mlp)\.norm\.": "inner norms",
    r"^norm_pre\.": "a norm before the blocks",
    r"^reg_token$": "register tokens",
}


@dataclass
class InitReport:
    """What one `model.init_from` entry did (keys in the model's / the checkpoint's names)."""

    part: str
    source: str
    layout: str
    """As `layout:` spells it (LAYOUTS)."""
    filled: list[str] = field(default_factory=list)
    """Model keys set from the checkpoint."""
    unfilled: list[str] = field(default_factory=list)
    """Model keys under the part left as built."""
    unused: list[str] = field(default_factory=list)
    """Checkpoint keys that set nothing."""
    notes: list[str] = field(default_factory=list)
    """LayerNorm epsilons that differ, resized position embeddings."""


@dataclass
class _Source:
    where: str
    state: dict[str, torch.Tensor]
    config: dict[str, Any]


@dataclass
class _Mapped:
    state: dict[str, torch.Tensor]
    """Tensors in FlavaForPreTraining naming."""
    origin: dict[str, list[str]]
    """Our key -> the checkpoint keys it was made from."""


def _locate(path: str) -> Path:
    local = Path(path).expanduser()
    if local.exists():
        return local
    if _HUB_ID.fullmatch(path) and not path.startswith("."):
        what = f"{path!r} (no such local path; read as a hub id)"
        return resolve_hub(path, what, "path: /data/dino-vitb16")
    raise CheckpointError(f"{path}: no such file or directory, and not a hub id (org/name)")


def read_source(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, config.json or {}) of a directory, weight file, run directory or hub id."""
    local = _locate(path)
    config_file: Path | None
    if local.is_dir():
        if not any((local / n).exists() for n in WEIGHT_FILES) and (local / "model").is_dir():
            local = local / "model"  # a run directory: its trained model
        state, config_file = load_weights(local), local / "config.json"
    else:  # a file: its config.json only beside a file of a standard name
        state = load_weight_file(local)
        config_file = local.parent / "config.json" if local.name in WEIGHT_FILES else None
    config = read_json(config_file) if config_file and config_file.is_file() else {}
    return state, config


def detect_layout(state: dict[str, torch.Tensor], config: dict[str, Any], where: str) -> Layout:
    """The Layout of LAYOUTS, from config.json and the keys (BERTs are refused first)."""
    if "flava_format" in config or any(_OURS.match(k) for k in state):
        return Layout.flava
    if tmm_prefix(state) is not None:
        return Layout.torchmultimodal
    if config.get("model_type") == "flava" or any(_HF_FLAVA.match(k) for k in state):
        return Layout.transformers
    for layout, pattern in ((Layout.vit, _VIT), (Layout.timm, _TIMM)):
        if any(pattern.search(k) for k in state):
            return layout
    first = next(iter(state), "none")
    raise CheckpointError(
        f"{where}: cannot tell its layout from its keys (e.g. {first!r}); add "
        f"layout: {' | '.join(LAYOUTS)} to the entry"
    )


def part_prefix(part: str, keys: list[str]) -> str:
    """The model-key prefix of `part` (an encoder name or a FLAVA parameter prefix)."""
    name = part.strip().rstrip(".")
    prefix = f"flava.{name}" if name.split(".")[0] in ENCODERS else name
    if not any(_under(k, prefix) for k in keys):
        raise CheckpointError(
            f"part {part!r}: no parameter of the model starts with {prefix!r}; use "
            f"{', '.join(ENCODERS)} or a prefix such as flava.image_projection or mim_head"
        )
    return prefix


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _encoder_of(prefix: str) -> str | None:
    return next((e for e in ENCODERS if _under(prefix, f"flava.{e}")), None)


def _refuse_bert(state: dict[str, torch.Tensor], part: str, where: str) -> None:
    key = next((k for k in state if _BERT.search(k)), None)
    if key is not None:
        raise CheckpointError(
            f"{where}: a post-LayerNorm BERT ({key}) cannot initialise FLAVA's pre-LayerNorm "
            f"{part} (its layers normalise after each residual sum, FLAVA's before); pretrain "
            "the text encoder with config=pretraining/unimodal_text.yaml and give its run "
            "directory instead"
        )


def _via_transformers(state: dict[str, torch.Tensor], inner: dict[str, str]) -> _Mapped:
    """Map transformers-FLAVA names (`inner`: name -> checkpoint key) through `hf_keys`."""
    mapped, _, _ = flava_state_from_transformers({name: state[k] for name, k in inner.items()})
    origin = {}
    for key, value in mapped.items():
        names = flava_state_to_transformers({key: value.to("meta")})  # our key back, e.g. q/k/v
        origin[key] = [inner[n] for n in (n.removeprefix("flava.") for n in names) if n in inner]
    return _Mapped(mapped, origin)


def _prefix(pattern: re.Pattern, state: dict[str, torch.Tensor], layout: Layout, where: str) -> str:
    """What the checkpoint puts before the layout's key names ("" for none)."""
    match = next((m for m in map(pattern.match, state) if m), None)
    if match is None:
        raise CheckpointError(
            f"{where}: no {layout} layer keys in it (e.g. {next(iter(state), 'none')!r}); "
            "drop the layout to have it told from the keys"
        )
    return match.group(1)


def _map_vit(state: dict[str, torch.Tensor], encoder: str, where: str) -> _Mapped:
    """One transformers encoder (ViTModel, FlavaImageModel...) onto `encoder`."""
    prefix = _prefix(_VIT, state, Layout.vit, where)  # e.g. "vit." in ViTForImageClassification
    inner = {f"{_HF_NAME[encoder]}.{k[len(prefix) :]}": k for k in state if k.startswith(prefix)}
    return _via_transformers(state, inner)


def _map_flava_hf(state: dict[str, torch.Tensor]) -> _Mapped:
    """transformers FlavaModel / FlavaForPreTraining."""
    inner = {k.removeprefix("flava."): k for k in state if not k.startswith("image_codebook.")}
    return _via_transformers(state, inner)


def _map_timm(state: dict[str, torch.Tensor], where: str) -> _Mapped:
    """timm VisionTransformer onto the image encoder (qkv is fused in both)."""
    prefix = _prefix(_TIMM, state, Layout.timm, where)  # e.g. "backbone." in DINO's own checkpoints
    out, origin = {}, {}
    for key, value in state.items():
        rest = key[len(prefix) :] if key.startswith(prefix) else None
        if rest is None:
            continue
        for pattern, what in _TIMM_UNSUPPORTED.items():
            if re.search(pattern, rest):
                raise CheckpointError(
                    f"{where}: this timm ViT has {what} ({key}), which FLAVA's encoder lacks; "
                    "it cannot be loaded without changing its outputs"
                )
        block = _TIMM_BLOCK.match(rest)
        if block:
            ours = f"encoder.layers.{block.group(1)}.{block.group(2)}.{rest[block.end() :]}"
        elif rest in _TIMM_KEYS:
            ours = _TIMM_KEYS[rest]
        else:
            continue
        out[f"flava.image_encoder.{ours}"] = value
        origin[f"flava.image_encoder.{ours}"] = [key]
    return _Mapped(out, origin)


def _map_flava(state: dict[str, torch.Tensor], top: set[str]) -> _Mapped:
    """Ours: FlavaForPreTraining, FlavaModel or a Lightning module's `model.` state."""
    match = next((m for m in map(_OURS.match, state) if m), None)
    base = match.group(1).removesuffix("flava.") if match else ""
    out, origin = {}, {}
    for key, value in state.items():
        if not key.startswith(base):
            continue
        name = key[len(base) :]
        if name.split(".")[0] in top:  # a FlavaModel's own key
            name = f"flava.{name}"
        out[name] = value
        origin[name] = [key]
    return _Mapped(out, origin)


def _map_tmm(state: dict[str, torch.Tensor], where: str) -> _Mapped:
    """TorchMultimodal's FLAVA (its codebook and classifier are not parts of this model)."""
    tmm = state_from_torchmultimodal(state, where)
    held = {k: v for k, v in tmm.state.items() if k in tmm.origin}  # not the filled defaults
    return _Mapped(held, tmm.origin)


def _map(layout: Layout, source: _Source, encoder: str | None, part: str, top: set[str]) -> _Mapped:
    if layout in (Layout.vit, Layout.timm):
        if encoder is None or (layout is Layout.timm and encoder != "image_encoder"):
            fits = "image_encoder" if layout is Layout.timm else ", ".join(ENCODERS)
            raise CheckpointError(
                f"{source.where}: a {layout} checkpoint holds one encoder; part {part!r} must be "
                f"{fits} or a prefix inside it"
            )
        if layout is Layout.timm:
            return _map_timm(source.state, source.where)
        return _map_vit(source.state, encoder, source.where)
    if layout is Layout.transformers:
        return _map_flava_hf(source.state)
    if layout is Layout.torchmultimodal:
        return _map_tmm(source.state, source.where)
    return _map_flava(source.state, top)


def _source_setting(config: dict[str, Any], layout: Layout, encoder: str, key: str) -> Any:
    """A setting of the checkpoint's `encoder` (config.json), or None when unknown."""
    if layout is Layout.timm:
        if key == "layer_norm_eps":
            return TIMM_LAYER_NORM_EPS
        heads = (config.get("model_args") or {}).get("num_heads")
        size = _TIMM_SIZE.search(str(config.get("architecture", "")))
        return heads if heads is not None or size is None else TIMM_HEADS[size.group(1)]
    if layout is Layout.transformers:
        config = config.get(f"{_CONFIG_NAME[encoder]}_config") or {}
    elif layout is Layout.flava:
        config = (config.get("config") or {}).get(_CONFIG_NAME[encoder]) or {}
    return config.get(key)


def _check_heads(
    source: _Source, layout: Layout, encoder: str, ours: Any, part: str, given: int | None
) -> list[str]:
    """Refuse another head count (`given`: the entry's num_heads, else config.json's); a
    checkpoint that does not say is assumed to have the model's, in a note."""
    theirs = given or _source_setting(source.config, layout, encoder, "num_attention_heads")
    if theirs is None:
        return [
            f"the checkpoint does not say its attention heads; assumed the model's "
            f"{ours.num_attention_heads} (give num_heads: N in the entry to have it checked)"
        ]
    if theirs != ours.num_attention_heads:
        raise CheckpointError(
            f"{source.where}: {part} has {theirs} attention heads in the checkpoint but "
            f"{ours.num_attention_heads} in the model; pick a model.preset of the checkpoint's "
            "shape"
        )
    return []


def _shape(keys: dict[str, torch.Tensor]) -> tuple[int, int | None]:
    """(layers, width) of the encoder layers among `keys` (width None when unseen)."""
    layers = {int(m.group(1)) for m in map(_LAYER.search, keys) if m}
    norm = next((v for k, v in keys.items() if k.endswith(".norm1.weight")), None)
    return len(layers), None if norm is None else int(norm.shape[0])


def _check_shape(chosen: dict, mine: dict, part: str, where: str) -> None:
    """Refuse another depth or width in one line naming both."""
    (theirs, their_width), (ours, our_width) = _shape(chosen), _shape(mine)
    if not (theirs and ours):
        return
    if theirs != ours or (their_width and our_width and their_width != our_width):
        raise CheckpointError(
            f"{where}: {part} is {theirs} layers x {their_width or '?'} wide in the checkpoint "
            f"but {ours} layers x {our_width or '?'} wide in the model; pick a model.preset of "
            "the checkpoint's shape"
        )


def resize_positions(pos: torch.Tensor, tokens: int) -> torch.Tensor:
    """Image positions [1, 1 + g*g, D] -> [1, tokens, D]: the patch grid resized bicubically
    (as `ImageEncoder.positions` does at run time), the class token's position kept."""
    g, new = math.isqrt(pos.shape[1] - 1), math.isqrt(tokens - 1)
    if g * g != pos.shape[1] - 1 or new * new != tokens - 1:
        raise ValueError(f"not a class token plus a square patch grid: {pos.shape[1]}, {tokens}")
    d = pos.shape[-1]
    grid = pos[:, 1:].float().reshape(1, g, g, d).permute(0, 3, 1, 2)  # [1, D, g, g]
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, d)  # [1, new*new, D]
    return torch.cat([pos[:, :1].float(), grid], dim=1).to(pos.dtype)


def _fit(key: str, value: torch.Tensor, target: torch.Tensor, where: str) -> tuple[Any, str]:
    """`value` shaped for `target` (positions resized) and a note, or a one-line refusal."""
    if value.shape == target.shape:
        return value, ""
    if value.numel() == target.numel() == 1:  # logit_scale: 0-d in older saves
        return value.reshape(target.shape), ""
    same_width = value.ndim == 3 == target.ndim and value.shape[2] == target.shape[2]
    if key.endswith("image_encoder.pos_embed") and same_width:
        try:
            resized = resize_positions(value, target.shape[1])
        except ValueError:
            pass
        else:
            g, new = math.isqrt(value.shape[1] - 1), math.isqrt(target.shape[1] - 1)
            return resized, f"{key}: {g}x{g} patch positions resized to {new}x{new} (bicubic)"
    raise CheckpointError(
        f"{where}: {key} is {tuple(value.shape)} in the checkpoint but {tuple(target.shape)} in "
        "the model; width, depth and patch size must match (pick a model.preset of the "
        "checkpoint's shape)"
    )


def _eps_note(source: _Source, layout: Layout, encoder: str | None, model: nn.Module) -> list[str]:
    if encoder is None:
        return []
    theirs = _source_setting(source.config, layout, encoder, "layer_norm_eps")
    ours = getattr(model.config, _CONFIG_NAME[encoder]).layer_norm_eps
    if theirs is None or float(theirs) == float(ours):
        return []
    return [f"layer_norm_eps {float(theirs):g} in the checkpoint, kept the model's {ours:g}"]


def init_from(
    model: nn.Module,
    part: str,
    path: str,
    layout: str | None = None,
    num_heads: int | None = None,
) -> InitReport:
    """Copy `part` of `model` (FlavaForPreTraining or FlavaModel) from the checkpoint at `path`
    (a directory, file or hub id; `layout` when the keys cannot tell; `num_heads`: the
    checkpoint's head count where its files do not say it); returns the report."""
    flat = isinstance(model, FlavaModel)  # keys without "flava."
    own = {(f"flava.{k}" if flat else k): v for k, v in model.state_dict().items()}
    prefix = part_prefix(part, list(own))
    encoder = _encoder_of(prefix)
    state, config = read_source(path)
    source = _Source(path, state, config)
    _refuse_bert(state, part, path)
    found = from_init_spelling(layout) if layout else detect_layout(state, config, path)
    if found is None:
        raise CheckpointError(f"{path}: layout {str(layout)!r} is not one of {', '.join(LAYOUTS)}")
    spelled = init_spelling(found)
    head_notes: list[str] = []
    if encoder is not None:
        ours = getattr(model.config, _CONFIG_NAME[encoder])
        head_notes = _check_heads(source, found, encoder, ours, part, num_heads)
    top = {k.split(".")[1] for k in own if k.startswith("flava.")}
    mapped = _map(found, source, encoder, part, top)
    chosen = {k: v for k, v in mapped.state.items() if _under(k, prefix)}
    if not chosen:
        raise CheckpointError(
            f"{path}: nothing in this {spelled} checkpoint maps onto {part}; check the part, or "
            f"give layout: {' | '.join(LAYOUTS)}"
        )
    mine = {k: v for k, v in own.items() if _under(k, prefix)}
    _check_shape(chosen, mine, part, path)
    report = InitReport(part, path, spelled, notes=_eps_note(source, found, encoder, model))
    report.notes += head_notes
    ready = {}
    for key, value in chosen.items():
        if key in mine:
            ready[key], note = _fit(key, value, mine[key], path)
            report.notes += [note] if note else []
    model.load_state_dict({(k[6:] if flat else k): v for k, v in ready.items()}, strict=False)
    used = {s for k in ready for s in mapped.origin.get(k, [])}
    report.filled = sorted(ready)
    report.unfilled = sorted(set(mine) - set(ready))
    report.unused = sorted(set(state) - used)
    return report


def fold_keys(keys: list[str], limit: int = 8) -> str:
    """Keys with layer numbers folded and weight / bias pairs merged
    (`encoder.layers.*.norm1.{weight,bias} x4`); past `limit` items, grouped by their first
    module (`flava.image_encoder.* x57`)."""
    counts: dict[str, int] = {}
    for key in keys:
        pattern = re.sub(r"\.\d+(?=\.|$)", ".*", key)
        counts[pattern] = counts.get(pattern, 0) + 1
    stems: dict[str, list[str]] = {}
    for pattern in counts:
        stem, _, leaf = pattern.rpartition(".")
        stems.setdefault(stem, []).append(leaf)
    items = {}
    for stem, leaves in stems.items():
        name = leaves[0] if len(leaves) == 1 else f"{{{','.join(leaves)}}}"
        items[f"{stem}.{name}".lstrip(".")] = counts[f"{stem}.{leaves[0]}".lstrip(".")]
    if len(items) > limit:  # by module: flava.image_encoder.*, mim_head.*
        items, limit = {}, 2 * limit
        for pattern, n in counts.items():
            parts = pattern.split(".")
            depth = 2 if parts[0] in _WRAPPERS else 1
            head = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
            items[head] = items.get(head, 0) + n
    shown = [f"{p} x{n}" if n > 1 else p for p, n in items.items()]
    more = f", ... ({len(shown) - limit} more)" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


def format_init_reports(reports: list[InitReport]) -> str:
    """The start-up table: per entry its part, layout, counts of filled / unfilled (the model's,
    left as built) / unused (the checkpoint's) keys and source, then those keys and notes."""
    header = ("part", "layout", "filled", "unfilled", "unused", "source")
    rows = [
        (r.part, r.layout, str(len(r.filled)), str(len(r.unfilled)), str(len(r.unused)), r.source)
        for r in reports
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if 2 <= i <= 4 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  " + "  ".join(cells).rstrip()

    lines = ["model.init_from:", line(header)]
    for report, row in zip(reports, rows, strict=True):
        lines.append(line(row))
        if report.unfilled:
            lines.append(f"      unfilled: {fold_keys(report.unfilled)}")
        if report.unused:
            lines.append(f"      unused: {fold_keys(report.unused)}")
        lines += [f"      note: {note}" for note in report.notes]
    return "\n".join(lines)
