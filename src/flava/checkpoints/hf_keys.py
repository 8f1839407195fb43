"""Key and config mapping between the transformers FLAVA layout and ours.

The transformers layout (`facebook/flava-full`) keeps query, key and value as three linears; we
fuse them into one `qkv` linear. Every other tensor maps one to one.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from flava.model.config import (
    CodebookConfig,
    FlavaConfig,
    ImageEncoderConfig,
    MultimodalEncoderConfig,
    TextEncoderConfig,
)

_ENCODERS = {"image_model": "image_encoder", "text_model": "text_encoder"}
_ENCODERS["multimodal_model"] = "multimodal_encoder"

# transformers suffix (after "<encoder>.") -> ours; layer keys are handled separately.
_ENCODER_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.bias",
    "embeddings.word_embeddings.weight": "word_embed.weight",
    "embeddings.position_embeddings.weight": "pos_embed.weight",
    "embeddings.token_type_embeddings.weight": "type_embed.weight",
    "embeddings.LayerNorm.weight": "embed_norm.weight",
    "embeddings.LayerNorm.bias": "embed_norm.bias",
    "cls_token": "cls_token",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
}
_LAYER_KEYS = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_TOP_KEYS = (
    "image_projection",
    "text_projection",
    "image_to_mm_projection",
    "text_to_mm_projection",
)
_HEADS = ("mim_head", "mlm_head", "mmm_image_head", "mmm_text_head")
_HEAD_KEYS = {
    "transform.dense": "dense",
    "transform.LayerNorm": "norm",
    "decoder": "decoder",
}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_QKV = ("query", "key", "value")


def _map_encoder(
    hf_enc: str,
    rest: str,
    out: dict[str, torch.Tensor],
    value: torch.Tensor,
    pending: dict[tuple[str, str], dict[str, torch.Tensor]],
) -> bool:
    ours = _ENCODERS[hf_enc]
    if rest in _ENCODER_KEYS:
        out[f"{ours}.{_ENCODER_KEYS[rest]}"] = value
        return True
    match = _LAYER_RE.match(rest)
    if not match:
        return False
    index, name, kind = match.groups()
    prefix = f"{ours}.encoder.layers.{index}"
    for q in _QKV:
        if name == f"attention.attention.{q}":
            pending.setdefault((f"{prefix}.attn.qkv", kind), {})[q] = value
            return True
    if name in _LAYER_KEYS:
        out[f"{prefix}.{_LAYER_KEYS[name]}.{kind}"] = value
        return True
    return False


def flava_state_from_transformers(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """transformers FlavaModel / FlavaForPreTraining keys -> (ours, codebook tensors, unplaced).

    Keys come out in our FlavaForPreTraining naming: the FlavaModel part under `flava.`, the
    heads as `mim_head...` etc. Codebook tensors are returned separately with their
    transformers names (without the `image_codebook.` prefix).
    """
    out: dict[str, torch.Tensor] = {}
    codebook: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unplaced: list[str] = []
    tied: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("image_codebook."):
            codebook[key[len("image_codebook.") :]] = value
            continue
        body = key[len("flava.") :] if key.startswith("flava.") else key
        head = body.split(".", 1)[0]
        if head in _ENCODERS and "." in body:
            if not _map_encoder(head, body.split(".", 1)[1], out, value, pending):
                unplaced.append(key)
        elif body == "logit_scale":
            out[body] = value.reshape(1)  # 0-d in transformers, a 1-element vector in ours
        elif body.split(".")[0] in _TOP_KEYS:
            out[body] = value
        elif head in _HEADS:
            rest = body[len(head) + 1 :]
            if rest == "bias":
                tied[f"{head}.decoder.bias"] = value
                continue
            module, _, kind = rest.rpartition(".")
            if module in _HEAD_KEYS:
                out[f"{head}.{_HEAD_KEYS[module]}.{kind}"] = value
            else:
                unplaced.append(key)
        elif head == "itm_head":
            rest = body[len("itm_head.") :]
            mapped = {"pooler.dense": "pooler.dense", "seq_relationship": "classifier"}
            module, _, kind = rest.rpartition(".")
            if module in mapped:
                out[f"itm_head.{mapped[module]}.{kind}"] = value
            else:
                unplaced.append(key)
        else:
            unplaced.append(key)
    for (name, kind), parts in pending.items():
        if set(parts) != set(_QKV):
            unplaced.extend(f"{name} ({kind}): missing {sorted(set(_QKV) - set(parts))}")
            continue
        out[f"{name}.{kind}"] = torch.cat([parts[q] for q in _QKV], dim=0)
    for key, value in tied.items():
        out.setdefault(key, value)
    out = {
        (k if k.split(".")[0] in _HEADS + ("itm_head",) else _prefix_flava(k)): v
        for k, v in out.items()
    }
    return out, codebook, unplaced


def _prefix_flava(key: str) -> str:
    return key if key.startswith("flava.") else f"flava.{key}"


def flava_state_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our FlavaModel / FlavaForPreTraining keys -> transformers keys (codebook excluded)."""
    reverse_enc = {v: k for k, v in _ENCODERS.items()}
    reverse_layer = {v: k for k, v in _LAYER_KEYS.items()}
    reverse_head = {v: k for k, v in _HEAD_KEYS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("codebook."):
            continue
        prefix = "flava." if key.startswith("flava.") else ""
        body = key[len(prefix) :]
        head, _, rest = body.partition(".")
        if head in reverse_enc:
            hf = f"{prefix}{reverse_enc[head]}"
            match = re.match(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", rest)
            if match:
                index, name, kind = match.groups()
                base = f"{hf}.encoder.layer.{index}"
                if name == "attn.qkv":
                    for q, part in zip(_QKV, value.chunk(3, dim=0), strict=True):
                        out[f"{base}.attention.attention.{q}.{kind}"] = part.clone()
                else:
                    out[f"{base}.{reverse_layer[name]}.{kind}"] = value
                continue
            hf_rest = _encoder_key_to_hf(head, rest)
            out[f"{hf}.{hf_rest}"] = value
        elif head in _HEADS:
            module, _, kind = rest.rpartition(".")
            out[f"{head}.{reverse_head[module]}.{kind}"] = value
            if rest == "decoder.bias":  # transformers 4.x ties decoder.bias to <head>.bias on
                out[f"{head}.bias"] = value.clone()  # load: without it, zeros replace ours
        elif head == "itm_head":
            module, _, kind = rest.rpartition(".")
            module = {"pooler.dense": "pooler.dense", "classifier": "seq_relationship"}[module]
            out[f"itm_head.{module}.{kind}"] = value
        elif body == "logit_scale":
            out[key] = value.reshape(())
        else:
            out[key] = value
    return out


def _encoder_key_to_hf(encoder: str, rest: str) -> str:
    if encoder == "multimodal_encoder" and rest == "cls_token":
        return "cls_token"
    if encoder == "text_encoder" and rest.startswith("pos_embed"):
        return "embeddings.position_embeddings.weight"
    if encoder == "image_encoder" and rest == "pos_embed":
        return "embeddings.position_embeddings"
    for hf, ours in _ENCODER_KEYS.items():
        if ours == rest and hf != "cls_token":
            return hf
    raise KeyError(f"no transformers name for {encoder}.{rest}")


_COMMON = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "qkv_bias",
)
_IMAGE = _COMMON + ("image_size", "patch_size", "num_channels", "vocab_size")
_TEXT = _COMMON + ("vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id")
_CODEBOOK = ("vocab_size", "hidden_size", "num_groups", "num_blocks_per_group", "input_channels")


def _pick(source: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: source[k] for k in keys if k in source}


def flava_config_from_transformers(cfg: dict[str, Any]) -> FlavaConfig:
    """A transformers `FlavaConfig` dict (config.json) -> our FlavaConfig."""
    missing = [k for k in ("text_config", "image_config", "multimodal_config") if k not in cfg]
    if missing:
        raise ValueError(f"transformers FLAVA config lacks {', '.join(missing)}")
    image = cfg["image_config"]
    if not image.get("image_size") or isinstance(image.get("image_size"), list):
        size = image.get("image_size")
        image = {**image, "image_size": size[0] if isinstance(size, list) else 224}
    config = FlavaConfig(
        image=ImageEncoderConfig(**_pick(image, _IMAGE)),
        text=TextEncoderConfig(**_pick(cfg["text_config"], _TEXT)),
        multimodal=MultimodalEncoderConfig(**_pick(cfg["multimodal_config"], _COMMON)),
        codebook=CodebookConfig(**_pick(cfg.get("image_codebook_config") or {}, _CODEBOOK)),
        **_pick(cfg, ("projection_dim", "logit_scale_init_value", "initializer_range")),
    )
    return config.validate()


def flava_config_to_transformers(config: FlavaConfig) -> dict[str, Any]:
    """Our FlavaConfig -> a transformers `FlavaConfig` dict (what config.json holds)."""

    def part(values: Any, keys: tuple[str, ...], model_type: str) -> dict[str, Any]:
        d = {k: getattr(values, k) for k in keys}
        d["model_type"] = model_type
        d["initializer_range"] = config.initializer_range
        return d

    image = part(config.image, _IMAGE, "flava_image_model")
    image["mask_token"] = True
    multimodal = part(config.multimodal, _COMMON, "flava_multimodal_model")
    multimodal["use_cls_token"] = True
    codebook = {k: getattr(config.codebook, k) for k in _CODEBOOK}
    codebook.update(model_type="flava_image_codebook", freeze=True)
    return {
        "model_type": "flava",
        "architectures": ["FlavaForPreTraining"],
        "text_config": part(config.text, _TEXT, "flava_text_model"),
        "image_config": image,
        "multimodal_config": multimodal,
        "image_codebook_config": codebook,
        "hidden_size": config.multimodal.hidden_size,
        "projection_dim": config.projection_dim,
        "logit_scale_init_value": config.logit_scale_init_value,
        "initializer_range": config.initializer_range,
        "init_codebook": True,
    }
