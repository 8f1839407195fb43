"""Key and config mapping between the original release's layout (TorchMultimodal's FLAVA) and ours.

TorchMultimodal (`torchmultimodal.models.flava.model`) names its modules differently:
`FLAVAModel` holds `image_encoder`, `text_encoder`, `mm_encoder` and four projections;
`FLAVAForPreTraining` holds it as `model.`, the DALL-E encoder as `image_codebook.encoder.`
(convolutions `w` / `b`) and the heads inside its loss module (`loss.mlm_loss.cls.`,
`loss.mmm_loss.mim.cls.`, `loss.itm_loss.`, the log-scale as `loss.contrastive_loss.logit_scale`);
`FLAVAForClassification` holds `model.` and an MLP `classifier.model.<i>.`. Its examples'
Lightning modules put all of it under one more `model.`. Query, key and value are three linears
(we fuse them); every other tensor maps one to one.

Nothing but the weights is stored, so the shapes tell the config; the head count is the one
setting they cannot tell (`num_heads`, default width / 64 as in the published model).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from flava.checkpoints.io import CheckpointError
from flava.model.config import (
    CodebookConfig,
    FlavaConfig,
    ImageEncoderConfig,
    MultimodalEncoderConfig,
    TextEncoderConfig,
)

TMM_HEAD_LAYER_NORM_EPS = 1e-5
"""The LayerNorm epsilon of the original release's MLM / MIM / MMM heads (its
`FLAVAPretrainingLoss` default; its encoders use 1e-12, as ours): converted models keep it."""
LAYER_KEY = re.compile(
    r"^(.*?)(image_encoder|text_encoder|mm_encoder)\.encoder\.layer\.\d+\.attention\.query\.weight$"
)
"""A key only TorchMultimodal's FLAVA has; group 1 is what its checkpoint puts before FLAVAModel."""
TMM_LOGIT_SCALE = math.log(1 / 0.07)
"""The log-scale TorchMultimodal starts from (a FLAVAModel file does not hold it)."""

_ENCODERS = {"image_encoder": "image_encoder", "text_encoder": "text_encoder"}
_ENCODERS["mm_encoder"] = "multimodal_encoder"
_PROJECTIONS: tuple[str, ...] = ("image_projection", "text_projection", "image_to_mm_projection")
_PROJECTIONS += ("text_to_mm_projection",)
_ENCODER_KEYS = {  # ours (after "<encoder>.") -> theirs, for every encoder that has it
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.bias": "embeddings.patch_embeddings.projection.bias",
    "word_embed.weight": "embeddings.word_embeddings.weight",
    "pos_embed.weight": "embeddings.position_embeddings.weight",
    "type_embed.weight": "embeddings.token_type_embeddings.weight",
    "embed_norm.weight": "embeddings.layer_norm.weight",
    "embed_norm.bias": "embeddings.layer_norm.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
}
_LAYER_KEYS = {  # ours (inside a layer) -> theirs
    "attn.proj": "attention.output",
    "mlp.fc1": "feedforward.model.0",
    "mlp.fc2": "feedforward.model.2",  # model.3 when built with dropout (a Dropout in between)
    "norm1": "attention_layernorm",
    "norm2": "feedforward_layernorm",
}
_HEADS = {  # ours -> theirs (under the root's "loss.")
    "mlm_head": "mlm_loss.cls",
    "mim_head": "mim_loss.cls",
    "mmm_text_head": "mmm_loss.mlm.cls",
    "mmm_image_head": "mmm_loss.mim.cls",
}
_HEAD_KEYS = {"dense": "dense", "norm": "layer_norm", "decoder": "decoder"}
_ITM_KEYS = {"pooler.dense": "itm_loss.pooler.dense", "classifier": "itm_loss.cls.seq_relationship"}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_FC2_RE = re.compile(r"^feedforward\.model\.[1-9]\d*$")
_QKV = ("query", "key", "value")


@dataclass
class TmmState:
    """A TorchMultimodal checkpoint's tensors in our names, and what the file held."""

    kind: str
    """FLAVAForPreTraining, FLAVAModel or FLAVAForClassification."""
    where: str
    """The file, for messages."""
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """FlavaForPreTraining naming (the FlavaModel part under `flava.`), no codebook."""
    origin: dict[str, list[str]] = field(default_factory=dict)
    """Our key -> the checkpoint keys it was made from."""
    codebook: dict[str, torch.Tensor] = field(default_factory=dict)
    """ImageCodebook naming; empty when the file has none."""
    classifier: dict[str, torch.Tensor] = field(default_factory=dict)
    """FlavaClassifier.head naming (`0.weight`, `3.weight`...); empty unless a classifier."""
    classifier_dropout: bool = False
    """Whether the classifier MLP had a Dropout between its linears (its rate is not stored)."""
    unplaced: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def tmm_prefix(state: dict[str, torch.Tensor]) -> str | None:
    """What the checkpoint puts before FLAVAModel's keys; None when not TorchMultimodal's."""
    return next((m.group(1) for m in map(LAYER_KEY.match, state) if m), None)


def _put(out: TmmState, ours: str, theirs: str, value: torch.Tensor) -> None:
    out.state[ours] = value
    out.origin.setdefault(ours, []).append(theirs)


def _map_encoder(
    out: TmmState, key: str, name: str, rest: str, value: torch.Tensor, qkv: dict
) -> bool:
    ours = _ENCODERS[name]
    match = _LAYER_RE.match(rest)
    if match is None:
        local = {v: k for k, v in _ENCODER_KEYS.items()}.get(rest)
        if name == "mm_encoder" and rest == "cls_token":
            local = "cls_token"
        if local is None:
            return False
        _put(out, f"flava.{ours}.{local}", key, value)
        return True
    index, module, kind = match.groups()
    base = f"flava.{ours}.encoder.layers.{index}"
    if module.startswith("attention.") and module.split(".", 1)[1] in _QKV:
        qkv.setdefault((f"{base}.attn.qkv.{kind}"), {})[module.split(".", 1)[1]] = (key, value)
        return True
    local = {v: k for k, v in _LAYER_KEYS.items()}.get(module)
    if local is None and _FC2_RE.match(module):
        local = "mlp.fc2"
    if local is None:
        return False
    _put(out, f"{base}.{local}.{kind}", key, value)
    return True


def _map_head(out: TmmState, key: str, rest: str, value: torch.Tensor) -> bool:
    """A key under the root's `loss.`."""
    if rest == "contrastive_loss.logit_scale":
        _put(out, "flava.logit_scale", key, value.reshape(1))
        return True
    for ours, theirs in _HEADS.items():
        if rest.startswith(theirs + "."):
            module, _, kind = rest[len(theirs) + 1 :].rpartition(".")
            if module == "" and kind == "bias":  # the decoder's tied bias, held twice
                _put(out, f"{ours}.decoder.bias", key, value)
                return True
            local = {v: k for k, v in _HEAD_KEYS.items()}.get(module)
            if local is not None:
                _put(out, f"{ours}.{local}.{kind}", key, value)
                return True
            return False
    module, _, kind = rest.rpartition(".")
    local = {v: k for k, v in _ITM_KEYS.items()}.get(module)
    if local is None:
        return False
    _put(out, f"itm_head.{local}.{kind}", key, value)
    return True


def _codebook_key(rest: str) -> str | None:
    """`encoder.blocks.<path>.w` (DALL-E's own names) -> our `blocks.<path>.weight`."""
    match = re.match(r"^encoder\.(blocks\..+)\.([wb])$", rest)
    if match is None:
        return None
    return f"{match.group(1)}.{'weight' if match.group(2) == 'w' else 'bias'}"


def state_from_torchmultimodal(state: dict[str, torch.Tensor], where: str) -> TmmState:
    """TorchMultimodal keys (bare, under `model.` or a Lightning module's `model.model.`) ->
    ours; one-line CheckpointError when they are not TorchMultimodal's FLAVA."""
    prefix = tmm_prefix(state)
    if prefix is None:
        first = next(iter(state), "none")
        raise CheckpointError(
            f"{where}: not a TorchMultimodal FLAVA checkpoint (no `image_encoder.encoder.layer."
            f"0.attention.query` or alike among its keys, e.g. {first!r})"
        )
    root = prefix.removesuffix("model.")
    out = TmmState("FLAVAModel", where)
    qkv: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        rest = key[len(prefix) :] if key.startswith(prefix) else ""
        name = rest.split(".", 1)[0] if rest else None
        if name in _ENCODERS and _map_encoder(out, key, name, rest.split(".", 1)[1], value, qkv):
            continue
        if name in _PROJECTIONS and rest.count(".") == 1:
            _put(out, f"flava.{rest}", key, value)
            continue
        tail = key[len(root) :] if key.startswith(root) else ""
        if tail.startswith("loss.") and _map_head(out, key, tail[len("loss.") :], value):
            out.kind = "FLAVAForPreTraining"
        elif tail.startswith("image_codebook.") and _codebook_key(tail[15:]):
            out.codebook[_codebook_key(tail[15:]) or ""] = value
        elif tail.startswith("classifier.model."):
            out.classifier[tail[len("classifier.model.") :]] = value
        else:
            out.unplaced.append(key)
    for name, parts in qkv.items():
        if set(parts) != set(_QKV):
            out.unplaced += [k for k, _ in parts.values()]
            continue
        out.state[name] = torch.cat([parts[q][1] for q in _QKV], dim=0)
        out.origin[name] = [parts[q][0] for q in _QKV]
    if out.codebook and out.kind == "FLAVAModel":
        out.kind = "FLAVAForPreTraining"
    if out.classifier:
        out.kind = "FLAVAForClassification"
        _classifier_head(out, where)
    _fill_defaults(out)
    return out


def _classifier_head(out: TmmState, where: str) -> None:
    """TorchMultimodal's MLP classifier (Linear, activation, [Dropout], Linear) as our
    FlavaClassifier head (`0.` and `3.`); any other MLP is refused in one line."""
    indices = sorted({int(k.split(".")[0]) for k in out.classifier})
    linears = [i for i in indices if out.classifier.get(f"{i}.weight", torch.empty(0)).ndim == 2]
    if len(linears) != 2 or indices != linears:
        raise CheckpointError(
            f"{where}: its classifier has layers {indices} (linears {linears}); only one hidden "
            "layer without normalisation (Linear, activation, dropout, Linear) maps onto our head"
        )
    first, last = linears
    out.classifier_dropout = last - first == 3
    out.classifier = {
        f"{0 if i == first else 3}.{kind}": out.classifier[f"{i}.{kind}"]
        for i in linears
        for kind in ("weight", "bias")
    }


def _fill_defaults(out: TmmState) -> None:
    """What our model holds but a TorchMultimodal file may not: the log-scale (not in a
    FLAVAModel), the image mask token (not in an encoder built without masking)."""
    if "flava.logit_scale" not in out.state:
        out.state["flava.logit_scale"] = torch.full((1,), TMM_LOGIT_SCALE)
        out.notes.append(f"no logit_scale in the file: set to log(1/0.07) = {TMM_LOGIT_SCALE:.4f}")
    cls = out.state.get("flava.image_encoder.cls_token")
    if cls is not None and "flava.image_encoder.mask_token" not in out.state:
        out.state["flava.image_encoder.mask_token"] = torch.zeros_like(cls)
        out.notes.append("no image mask token in the file (built without masking): zeros")


def _encoder_shape(state: dict[str, torch.Tensor], name: str, heads: int | None) -> dict:
    """hidden_size, layers, heads and MLP width of our encoder `name` from its tensors."""
    width = int(state[f"flava.{name}.norm.weight"].shape[0])
    layer = re.compile(rf"^flava\.{name}\.encoder\.layers\.(\d+)\.")
    depth = len({m.group(1) for m in map(layer.match, state) if m})
    fc1 = state.get(f"flava.{name}.encoder.layers.0.mlp.fc1.weight")
    if heads is None:
        if width % 64:
            raise CheckpointError(
                f"{name} is {width} wide, not a multiple of 64: give its attention heads "
                "(--num-heads N)"
            )
        heads = width // 64
    if width % heads:
        raise CheckpointError(f"{name} is {width} wide: {heads} attention heads do not divide it")
    return {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "intermediate_size": int(fc1.shape[0]) if fc1 is not None else 4 * width,
    }


def _vocab(state: dict[str, torch.Tensor], heads: tuple[str, ...], default: int) -> int:
    """The vocabulary of the first of `heads` whose decoder is held, else `default`."""
    decoder = next(
        (state[f"{h}.decoder.weight"] for h in heads if f"{h}.decoder.weight" in state), None
    )
    return default if decoder is None else int(decoder.shape[0])


def codebook_config(codebook: dict[str, torch.Tensor]) -> CodebookConfig:
    """The DALL-E encoder's shape from its tensors (our names)."""
    stem = codebook["blocks.input.weight"]  # [hidden, channels, 7, 7]
    blocks = {k.split(".")[2] for k in codebook if k.startswith("blocks.group_1.")}
    return CodebookConfig(
        vocab_size=int(codebook["blocks.output.conv.weight"].shape[0]),
        hidden_size=int(stem.shape[0]),
        num_blocks_per_group=len(blocks),
        input_channels=int(stem.shape[1]),
    )


def config_from_torchmultimodal(tmm: TmmState, where: str, num_heads: int | None) -> FlavaConfig:
    """Our FlavaConfig from the shapes of a mapped TorchMultimodal checkpoint (`num_heads`: every
    encoder's attention heads; None: width / 64)."""
    s = tmm.state
    try:
        patch = s["flava.image_encoder.patch_embed.weight"]  # [D, C, p, p]
        grid = math.isqrt(int(s["flava.image_encoder.pos_embed"].shape[1]) - 1)
        word = s["flava.text_encoder.word_embed.weight"]
        shapes = {n: _encoder_shape(s, n, num_heads) for n in _ENCODERS.values()}
        projection = int(s["flava.image_projection.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{where}: a TorchMultimodal FLAVA without {exc.args[0]}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    codebook = codebook_config(tmm.codebook) if tmm.codebook else CodebookConfig()
    text_vocab = _vocab(s, ("mlm_head", "mmm_text_head"), int(word.shape[0]))
    if text_vocab != word.shape[0]:
        raise CheckpointError(
            f"{where}: its text heads predict {text_vocab} tokens but its text encoder embeds "
            f"{word.shape[0]}; our model needs one text vocabulary"
        )
    image = ImageEncoderConfig(
        **shapes["image_encoder"],
        image_size=grid * int(patch.shape[-1]),
        patch_size=int(patch.shape[-1]),
        num_channels=int(patch.shape[1]),
        vocab_size=_vocab(s, ("mim_head", "mmm_image_head"), codebook.vocab_size),
    )
    text = TextEncoderConfig(
        **shapes["text_encoder"],
        vocab_size=int(word.shape[0]),
        max_position_embeddings=int(s["flava.text_encoder.pos_embed.weight"].shape[0]),
        type_vocab_size=int(s["flava.text_encoder.type_embed.weight"].shape[0]),
    )
    multimodal = MultimodalEncoderConfig(**shapes["multimodal_encoder"])
    config = FlavaConfig(
        image,
        text,
        multimodal,
        codebook,
        projection_dim=projection,
        head_layer_norm_eps=TMM_HEAD_LAYER_NORM_EPS,
    )
    try:
        return config.validate()
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def state_to_torchmultimodal(
    state: dict[str, torch.Tensor], codebook: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Our FlavaForPreTraining keys (with `codebook`'s) -> TorchMultimodal FLAVAForPreTraining
    keys; our FlavaModel keys (no `flava.`) -> FLAVAModel keys."""
    pretraining = any(k.startswith("flava.") for k in state)
    model = "model." if pretraining else ""
    reverse = {v: k for k, v in _ENCODERS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        body = key.removeprefix("flava.")
        name, _, rest = body.partition(".")
        if name in reverse:
            out.update(_encoder_to_tmm(f"{model}{reverse[name]}", name, rest, value))
        elif name in _PROJECTIONS:
            out[f"{model}{body}"] = value
        elif body == "logit_scale":
            if pretraining:
                out["loss.contrastive_loss.logit_scale"] = value.reshape(())
        elif name in _HEADS:
            module, _, kind = rest.rpartition(".")
            theirs = f"loss.{_HEADS[name]}"
            out[f"{theirs}.{_HEAD_KEYS[module]}.{kind}"] = value
            if module == "decoder" and kind == "bias":
                out[f"{theirs}.bias"] = value
        elif name == "itm_head":
            module, _, kind = rest.rpartition(".")
            out[f"loss.{_ITM_KEYS[module]}.{kind}"] = value
        else:
            raise KeyError(f"no TorchMultimodal name for {key}")
    for key, value in (codebook or {}).items():
        path, _, kind = key.rpartition(".")
        out[f"image_codebook.encoder.{path}.{'w' if kind == 'weight' else 'b'}"] = value
    return out


def _encoder_to_tmm(
    theirs: str, ours: str, rest: str, value: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One of our encoder tensors (`rest` after the encoder's name) under TorchMultimodal names."""
    match = re.match(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", rest)
    if match is None:
        if ours == "multimodal_encoder" and rest == "cls_token":
            return {f"{theirs}.cls_token": value}
        return {f"{theirs}.{_ENCODER_KEYS[rest]}": value}
    index, module, kind = match.groups()
    base = f"{theirs}.encoder.layer.{index}"
    if module == "attn.qkv":
        parts = value.chunk(3, dim=0)
        return {f"{base}.attention.{q}.{kind}": p.clone() for q, p in zip(_QKV, parts, strict=True)}
    return {f"{base}.{_LAYER_KEYS[module]}.{kind}": value}
