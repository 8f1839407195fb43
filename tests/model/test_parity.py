"""Parity with transformers' FLAVA (randomly initialised, small configs) in both directions."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from flava.checkpoints import (  # noqa: E402
    export_transformers,
    from_pretrained,
    save_pretrained,
)
from flava.checkpoints.hf_keys import (  # noqa: E402
    flava_config_from_transformers,
    flava_state_from_transformers,
)
from flava.model import FlavaForPreTraining, FlavaModel  # noqa: E402

SHAPES = [
    # (hidden, heads, intermediate, image layers, text layers, mm layers, image, patch)
    (32, 2, 37, 2, 2, 1, 32, 8),
    (48, 3, 64, 1, 2, 2, 48, 16),
    (36, 4, 50, 2, 1, 1, 40, 8),
]


def hf_config(hidden, heads, inter, li, lt, lm, image, patch):
    shape = dict(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter)
    return transformers.FlavaConfig(
        image_config=dict(num_hidden_layers=li, image_size=image, patch_size=patch, **shape),
        text_config=dict(num_hidden_layers=lt, vocab_size=300, max_position_embeddings=40, **shape),
        multimodal_config=dict(num_hidden_layers=lm, **shape),
        image_codebook_config=dict(hidden_size=8, vocab_size=64, num_blocks_per_group=1),
        projection_dim=24,
        hidden_size=hidden,
    )


def randomise(module: torch.nn.Module) -> None:
    """Give every tensor (including LayerNorms, tokens and biases) random values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 1 else 0.0) * 0)


def build_pair(shape):
    hf = transformers.FlavaForPreTraining(hf_config(*shape)).eval()
    randomise(hf)
    mapped, _, unplaced = flava_state_from_transformers(hf.state_dict())
    assert not unplaced
    ours = FlavaForPreTraining(flava_config_from_transformers(hf.config.to_dict()), codebook=None)
    missing, unexpected = ours.load_state_dict(mapped, strict=False)
    assert not missing and not unexpected
    return hf, ours.eval()


def inputs(shape, batch=3, length=11):
    g = torch.Generator().manual_seed(2)
    image = shape[6]
    pixels = torch.randn(batch, 3, image, image, generator=g)
    ids = torch.randint(5, 300, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    n = (image // shape[7]) ** 2
    masked = torch.rand(batch, n, generator=g) < 0.4
    return pixels, ids, mask, masked


def _features(out):
    """transformers' get_*_features: a tensor [B, N, D] before version 5, an output after."""
    return getattr(out, "pooler_output", out)


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_encoders_projections_and_fusion_match(shape):
    hf, ours = build_pair(shape)
    pixels, ids, mask, masked = inputs(shape)
    with torch.no_grad():
        ref = hf.flava(
            input_ids=ids, pixel_values=pixels, attention_mask=mask, bool_masked_pos=masked
        )
        out = ours.flava(pixels, ids, mask, bool_masked_pos=masked, output_hidden_states=True)
        for theirs, mine in zip(
            ref.image_output.hidden_states, out.image.hidden_states, strict=True
        ):
            close(mine, theirs)
        close(out.image.last_hidden_state, ref.image_embeddings)
        valid = mask.bool()
        for theirs, mine in zip(ref.text_output.hidden_states, out.text.hidden_states, strict=True):
            close(mine[valid], theirs[valid])
        close(out.text.last_hidden_state[valid], ref.text_embeddings[valid])
        mm_valid = torch.cat([torch.ones(3, 2 + masked.shape[1], dtype=torch.bool), valid], 1)
        close(out.multimodal.last_hidden_state[mm_valid], ref.multimodal_embeddings[mm_valid])
        image_feat = _features(hf.flava.get_image_features(pixel_values=pixels))[:, 0]
        text_feat = _features(hf.flava.get_text_features(input_ids=ids, attention_mask=mask))
        close(ours.flava.encode_image(pixels), image_feat)
        close(ours.flava.encode_text(ids, mask), text_feat[:, 0])


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_heads_match(shape):
    hf, ours = build_pair(shape)
    g = torch.Generator().manual_seed(3)
    d = shape[0]
    x = torch.randn(4, 9, d, generator=g)
    with torch.no_grad():
        for name in ("mim_head", "mlm_head", "mmm_image_head", "mmm_text_head"):
            close(getattr(ours, name)(x), getattr(hf, name)(x))
        close(ours.itm_head(x), hf.itm_head(x))


def test_attention_maps_and_hidden_states_only_when_asked():
    hf, ours = build_pair(SHAPES[0])
    pixels, ids, mask, _ = inputs(SHAPES[0])
    with torch.no_grad():
        plain = ours.flava(pixels, ids, mask)
        assert plain.image.hidden_states is None and plain.image.attentions is None
        full = ours.flava(pixels, ids, mask, output_hidden_states=True, output_attentions=True)
        ref = hf.flava.image_model(pixel_values=pixels, output_attentions=True)
    assert len(full.image.hidden_states) == SHAPES[0][3] + 1
    for theirs, mine in zip(ref.attentions, full.image.attentions, strict=True):
        close(mine, theirs)
    close(full.image.last_hidden_state, plain.image.last_hidden_state)


def test_position_interpolation_matches(tmp_path):
    hf, ours = build_pair(SHAPES[0])
    pixels = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        ref = hf.flava.image_model(pixel_values=pixels, interpolate_pos_encoding=True)
        out = ours.flava.image_encoder(pixels)
    close(out.last_hidden_state, ref.last_hidden_state)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_transformers_directory_round_trip(shape, tmp_path):
    hf = transformers.FlavaForPreTraining(hf_config(*shape)).eval()
    randomise(hf)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(FlavaForPreTraining, tmp_path / "hf").eval()
    pixels, ids, mask, masked = inputs(shape)
    with torch.no_grad():
        close(
            ours.flava.encode_image(pixels),
            _features(hf.flava.get_image_features(pixel_values=pixels))[:, 0],
        )
    # ours -> transformers: no missing or unexpected keys, same outputs
    export_transformers(ours, tmp_path / "back")
    back, info = transformers.FlavaForPreTraining.from_pretrained(
        tmp_path / "back", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back.eval()
    with torch.no_grad():
        a = back.flava(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        b = ours.flava(pixels, ids, mask)
        close(b.image.last_hidden_state, a.image_embeddings)
        valid = torch.cat([torch.ones(3, 2 + masked.shape[1], dtype=torch.bool), mask.bool()], 1)
        close(b.multimodal.last_hidden_state[valid], a.multimodal_embeddings[valid])
        x = torch.randn(2, 5, shape[0])
        close(ours.itm_head(x), back.itm_head(x))
        close(ours.mlm_head(x), back.mlm_head(x))
    # the codebook travels both ways too
    px = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref_ids = hf.image_codebook.get_codebook_indices(ours.codebook.map_pixels(px))
    assert torch.equal(ours.codebook.get_codebook_indices(px), ref_ids.flatten(1))


def test_flava_model_directory_loads_into_both_classes(tmp_path):
    hf = transformers.FlavaModel(hf_config(*SHAPES[0])).eval()
    randomise(hf)
    hf.save_pretrained(tmp_path / "hf")
    model = from_pretrained(FlavaModel, tmp_path / "hf").eval()
    pixels, ids, mask, _ = inputs(SHAPES[0])
    with torch.no_grad():
        close(
            model.encode_text(ids, mask),
            _features(hf.get_text_features(input_ids=ids, attention_mask=mask))[:, 0],
        )
    pre = from_pretrained(FlavaForPreTraining, tmp_path / "hf")  # heads missing: initialised
    assert pre.codebook is None
    export_transformers(model, tmp_path / "back")
    back, info = transformers.FlavaModel.from_pretrained(
        tmp_path / "back", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_our_format_round_trip(tmp_path):
    _, ours = build_pair(SHAPES[1])
    save_pretrained(ours, tmp_path / "ours")
    again = from_pretrained(FlavaForPreTraining, tmp_path / "ours")
    for (k, a), (k2, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    encoder_only = from_pretrained(FlavaModel, tmp_path / "ours")
    assert torch.equal(encoder_only.logit_scale, ours.flava.logit_scale)
