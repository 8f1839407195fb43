"""Exact parameter counts of FlavaForPreTraining by part, from its config alone (checked
against the built model in tests/test_plan.py)."""

from __future__ import annotations

from flava.model.codebook import DOWNSAMPLE, GROUP_WIDTHS
from flava.model.config import CodebookConfig, EncoderConfig, FlavaConfig


def layer_parameters(c: EncoderConfig) -> int:
    """Parameters of one transformer layer."""
    d, f = c.hidden_size, c.intermediate_size
    return 4 * d * d + 2 * d * f + (6 + 3 * int(c.qkv_bias)) * d + f


def _encoder_base(c: EncoderConfig) -> int:
    """Layers + final LayerNorm + pooler."""
    d = c.hidden_size
    return c.num_hidden_layers * layer_parameters(c) + 2 * d + d * d + d


def head_parameters(d: int, vocab: int) -> int:
    """MaskedPredictionHead: dense + LayerNorm + decoder."""
    return d * d + d + 2 * d + d * vocab + vocab


def codebook_convs(c: CodebookConfig) -> list[tuple[int, int, int, int]]:
    """(in, out, kernel, downsampling of the resolution) of every codebook convolution."""
    hid, convs = c.hidden_size, [(c.input_channels, c.hidden_size, 7, 1)]
    for g, (w_in, w_out) in enumerate(GROUP_WIDTHS):
        scale = 2**g
        for i in range(c.num_blocks_per_group):
            n_in, n_out = (w_in if i == 0 else w_out) * hid, w_out * hid
            n_hid = n_out // 4
            if n_in != n_out:
                convs.append((n_in, n_out, 1, scale))
            convs += [(n_in, n_hid, 3, scale), (n_hid, n_hid, 3, scale)]
            convs += [(n_hid, n_hid, 3, scale), (n_hid, n_out, 1, scale)]
    convs.append((8 * hid, c.vocab_size, 1, DOWNSAMPLE))
    return convs


def parameter_counts(config: FlavaConfig) -> dict[str, int]:
    """Exact parameter counts of FlavaForPreTraining (with the codebook) by part."""
    i, t, m = config.image, config.text, config.multimodal
    di, dt, dm, p = i.hidden_size, t.hidden_size, m.hidden_size, config.projection_dim
    image = _encoder_base(i) + i.num_channels * i.patch_size**2 * di + 3 * di  # bias, CLS, mask
    image += (i.grid_size**2 + 1) * di
    text = _encoder_base(t) + (t.vocab_size + t.max_position_embeddings + t.type_vocab_size) * dt
    text += 2 * dt
    multimodal = _encoder_base(m) + dm
    projections = (di + 1) * p + (dt + 1) * p + (di + 1) * dm + (dt + 1) * dm + 1
    heads = head_parameters(di, i.vocab_size) + head_parameters(dt, t.vocab_size)
    heads += (
        head_parameters(dm, i.vocab_size)
        + head_parameters(dm, t.vocab_size)
        + dm * dm
        + dm
        + 2 * dm
        + 2
    )
    codebook = sum(a * b * k * k + b for a, b, k, _ in codebook_convs(config.codebook))
    trainable = image + text + multimodal + projections + heads
    layers = sum(c.num_hidden_layers * layer_parameters(c) for c in (i, t, m))
    return {
        "image_encoder": image,
        "text_encoder": text,
        "multimodal_encoder": multimodal,
        "projections": projections,
        "heads": heads,
        "codebook": codebook,
        "trainable": trainable,
        "total": trainable + codebook,
        "in_layers": layers,
        "largest_layer": max(layer_parameters(c) for c in (i, t, m)),
    }
