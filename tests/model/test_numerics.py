"""Mixed precision: LayerNorm statistics and losses stay in fp32 under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flava.model import FlavaForPreTraining, preset
from flava.model.norm import LayerNorm
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


def _mlp_grads(mlp, x, grad, autocast, fused):
    """Output and gradients (x, fc1.weight, fc2.weight, fc2.bias) of the MLP, fused or plain."""
    params = (x, mlp.fc1.weight, mlp.fc2.weight, mlp.fc2.bias)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = mlp(x) if fused else mlp.fc2(mlp.act(mlp.fc1(x)))
    return out, torch.autograd.grad(out, params, grad)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("autocast", [False, True])
def test_mlp_recomputed_gelu_matches_plain_modules(act, autocast):
    from flava.model.config import EncoderConfig
    from flava.model.transformer import MLP

    torch.manual_seed(0)
    config = EncoderConfig(
        hidden_size=48, num_attention_heads=4, intermediate_size=192, hidden_act=act
    )
    mlp = MLP(config)
    assert mlp.gelu_approximation == ("none" if act == "gelu" else "tanh")
    x = torch.randn(3, 7, 48, requires_grad=True)
    grad = torch.randn(3, 7, 48)
    out, grads = _mlp_grads(mlp, x, grad, autocast, fused=True)
    ref, ref_grads = _mlp_grads(mlp, x, grad, autocast, fused=False)
    assert out.dtype == ref.dtype == (torch.bfloat16 if autocast else torch.float32)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    for ours, theirs in zip(grads, ref_grads, strict=True):
        assert ours.dtype == theirs.dtype
        assert torch.equal(ours, theirs)  # the same operations in the same order


def _saved_bytes(fn):
    """Bytes of every tensor autograd keeps for backward while `fn` runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(sizes)


def test_mlp_keeps_one_hidden_activation_for_backward():
    from flava.model.config import EncoderConfig
    from flava.model.transformer import MLP

    mlp = MLP(EncoderConfig(hidden_size=32, num_attention_heads=4, intermediate_size=512))
    x = torch.randn(4, 10, 32, requires_grad=True)
    saved_bytes = _saved_bytes
    fused = saved_bytes(lambda: mlp(x))
    plain = saved_bytes(lambda: mlp.fc2(mlp.act(mlp.fc1(x))))
    hidden = 4 * 10 * 512 * 4  # one [B, N, 4D] fp32 activation
    assert plain - fused == hidden


def _plain_layer(layer, x, mask):
    """The layer's forward through its plain modules (no recomputing autograd functions)."""
    attn, _ = layer.attn(layer.norm1(x), mask)
    x = x + attn
    mlp = layer.mlp
    return x + mlp.fc2(mlp.act(mlp.fc1(layer.norm2(x))))


@pytest.mark.parametrize(
    ("autocast", "dtype"),
    [(False, torch.float32), (True, torch.float32), (True, torch.bfloat16)],
)
def test_layer_recomputing_norms_and_gelu_matches_plain_modules(autocast, dtype):
    from flava.model.config import EncoderConfig
    from flava.model.transformer import Layer

    torch.manual_seed(0)
    layer = Layer(EncoderConfig(hidden_size=48, num_attention_heads=4, intermediate_size=192))
    with torch.no_grad():
        for norm in (layer.norm1, layer.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    # a bf16 input: the norms cast it to fp32 and back, in the backward pass too
    x = torch.randn(3, 7, 48).to(dtype).requires_grad_()
    mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    mask[2, ..., 5:] = False
    grad = torch.randn(3, 7, 48).to(dtype)
    inputs = (x, *layer.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, _ = layer(x, mask)
        ref = _plain_layer(layer, x, mask)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_grads = torch.autograd.grad(ref, inputs, grad)
    for ours, theirs in zip(grads, ref_grads, strict=True):
        assert ours.dtype == theirs.dtype
        assert torch.equal(ours, theirs)  # the same operations in the same order
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.testing.assert_close(layer(x, mask)[0], _plain_layer(layer, x, mask), atol=0, rtol=0)


def test_layer_keeps_neither_norm_output_nor_gelu_output_for_backward():
    from flava.model.config import EncoderConfig
    from flava.model.transformer import Layer

    layer = Layer(EncoderConfig(hidden_size=32, num_attention_heads=4, intermediate_size=512))
    x = torch.randn(4, 10, 32, requires_grad=True)
    fused = _saved_bytes(lambda: layer(x))
    plain = _saved_bytes(lambda: _plain_layer(layer, x, None))
    width, hidden = 4 * 10 * 32 * 4, 4 * 10 * 512 * 4  # one [B, N, D] / [B, N, 4D] fp32 tensor
    stats = 2 * 4 * 10 * 4  # a norm's mean and 1/std [B, N, 1], recomputed with its output
    assert plain - fused == 2 * (width + stats) + hidden  # norm1(x), norm2(x) and gelu(h)
