"""Mixed precision: LayerNorm statistics and losses stay in fp32 under bf16 autocast."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flava.model import FlavaForPreTraining, preset
from flava.model.transformer import LayerNorm
from flava.objectives.losses import contrastive_loss, masked_prediction_loss


def test_layer_norm_computes_in_fp32_under_autocast():
    ln = LayerNorm(64)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.1, 0.1)
    x = (torch.randn(4, 64) * 30 + 100).bfloat16()  # large mean: bf16 statistics would be poor
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ln(x)
    ref = F.layer_norm(x.float(), (64,), ln.weight, ln.bias, ln.eps).bfloat16()
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref)


def test_bf16_forward_and_losses_are_fp32():
    model = FlavaForPreTraining(preset("tiny"), codebook=None)
    pixels = torch.randn(2, 3, 64, 64)
    ids = torch.randint(1000, 2000, (2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.flava(pixels, ids)
        loss = contrastive_loss(
            model.flava.image_embedding(out.image),
            model.flava.text_embedding(out.text),
            model.flava.logit_scale,
        )
        labels = torch.full((2, 7), -100)
        labels[:, 2] = 5
        mlm = masked_prediction_loss(model.mlm_head, out.text.last_hidden_state, labels)
    assert out.image.last_hidden_state.dtype == torch.bfloat16
    assert loss["contrastive"].dtype == torch.float32 and mlm.dtype == torch.float32
    assert torch.isfinite(loss["contrastive"]) and torch.isfinite(mlm)


def test_cpu_half_precision_attention_is_explicit_and_matches_fp32():
    from flava.model.config import EncoderConfig
    from flava.model.transformer import Attention, _explicit_attention

    torch.manual_seed(0)
    attn = Attention(EncoderConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128))
    x = torch.randn(2, 9, 64)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False  # padding keys of the second sample
    reference, _ = attn(x, mask)  # fp32: SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attn(x, mask)
        _, weights = attn(x, mask, return_attention=True)
    assert _explicit_attention(torch.zeros(1, dtype=torch.bfloat16))
    assert not _explicit_attention(torch.zeros(1))
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
    weights = weights.detach()
    assert weights.dtype == torch.bfloat16 and float(weights[1, ..., 6:].abs().max()) == 0.0
    torch.testing.assert_close(weights.float().sum(-1), torch.ones(2, 4, 9), atol=1e-2, rtol=0)
