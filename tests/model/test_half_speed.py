"""The bf16 speed changes leave the numbers as they were: a bf16 step's losses and gradients
match the previous code path's (plain modules, fp32 softmax, per-use weight casts) within the
bf16 tolerance of tests/model/test_numerics.py, and the fp32 step is bitwise unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flava.model import FlavaForPreTraining, attention, fused, preset
from flava.model import transformer as transformer_module
from flava.objectives.pretraining import LossWeights, pretraining_step


@pytest.fixture(autouse=True)
def _unmeasured_kernels():
    """Tests start and end with no measured attention kernel (the defaults)."""
    attention._chosen.clear()
    yield
    attention._chosen.clear()


def _previous_explicit(q, k, v, mask, dropout, training):
    """The explicit attention before the change: scale on the scores, softmax in fp32, cast."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return F.dropout(probs, dropout, training) @ v, probs


def _previous_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Swap in the code path before the change: plain modules (autocast's casts, per use)."""
    monkeypatch.setattr(transformer_module.attention, "explicit", _previous_explicit)
    monkeypatch.setattr(fused, "norm_linear", lambda norm, linear, x: linear(norm(x)))
    monkeypatch.setattr(fused, "gelu_linear", lambda h, linear, a: linear(F.gelu(h, approximate=a)))


def _batch(config, b: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size, grid = config.image.image_size, config.image.grid_size
    ids = torch.randint(1000, 2000, (b, length), generator=g)
    attention_mask = torch.ones(b, length, dtype=torch.long)
    attention_mask[1, 6:] = 0  # padding: the masked attention path
    labels = torch.full((b, length), -100)
    labels[:, 2:4] = ids[:, 2:4]
    masked = ids.clone()
    masked[:, 2:4] = 103
    return {
        "pixel_values": torch.randn(b, 3, size, size, generator=g),
        "bool_masked_pos": torch.rand(b, grid * grid, generator=g) < 0.4,
        "input_ids": ids,
        "attention_mask": attention_mask,
        "input_ids_masked": masked,
        "mlm_labels": labels,
    }


def _step(model, batch, half: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and every parameter's gradient of one vl step (fixed MIM targets, fixed ITM draw)."""
    grid = model.config.image.grid_size
    targets = torch.arange(batch["pixel_values"].shape[0] * grid * grid).reshape(-1, grid * grid)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
        out = pretraining_step(
            model,
            batch,
            "vl",
            lambda b: targets % 64,
            LossWeights(),
            generator=torch.Generator().manual_seed(1),
        )
    out["loss"].backward()
    params = [p for p in model.parameters() if p.requires_grad]
    return out["loss"].detach(), [p.grad.clone() for p in params if p.grad is not None]


def _model() -> FlavaForPreTraining:
    torch.manual_seed(0)
    return FlavaForPreTraining(preset("tiny"), codebook=None).train()


def test_bf16_step_matches_the_previous_path(monkeypatch):
    model, batch = _model(), _batch(preset("tiny"))
    for layer in model.modules():  # attention maps on: the explicit path in both
        if isinstance(layer, transformer_module.Attention):
            layer.attn_dropout = 0.0
    assert attention.kernel("cpu", torch.bfloat16) == "explicit"
    loss, grads = _step(model, batch, half=True)
    loss_again, grads_again = _step(model, batch, half=True)  # the weight copies reused
    assert torch.equal(loss, loss_again)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_again, strict=True))
    with monkeypatch.context() as m:
        _previous_path(m)
        ref_loss, ref_grads = _step(model, batch, half=True)
    torch.testing.assert_close(loss, ref_loss, atol=3e-2, rtol=3e-2)
    assert len(grads) == len(ref_grads)
    for ours, theirs in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=3e-2, rtol=3e-2)


def test_fp32_step_is_bitwise_unchanged(monkeypatch):
    model, batch = _model(), _batch(preset("tiny"))
    loss, grads = _step(model, batch, half=False)
    with monkeypatch.context() as m:
        _previous_path(m)
        ref_loss, ref_grads = _step(model, batch, half=False)
    assert torch.equal(loss, ref_loss)
    for ours, theirs in zip(grads, ref_grads, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", ["fused", "foreach"])
def test_weights_are_cast_once_per_optimizer_step(kind):
    lin = torch.nn.Linear(8, 4)
    first = fused.cast_once(lin.weight, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and not first.requires_grad
    assert fused.cast_once(lin.weight, torch.bfloat16) is first  # reused
    lin(torch.randn(2, 8)).sum().backward()
    # fused AdamW updates in place without moving the version counter: the step itself resets
    torch.optim.AdamW(lin.parameters(), lr=0.5, **{kind: True}).step()
    again = fused.cast_once(lin.weight, torch.bfloat16)
    assert again is not first and torch.equal(again, lin.weight.detach().bfloat16())
    with torch.no_grad():
        lin.weight.mul_(0)  # in place, outside an optimizer
    assert float(fused.cast_once(lin.weight, torch.bfloat16).abs().sum()) == 0.0
    lin.weight.data = torch.ones(4, 8)  # replaced storage
    assert float(fused.cast_once(lin.weight, torch.bfloat16).sum()) == 32.0
    assert fused.cast_once(lin.weight, torch.float32).data_ptr() == lin.weight.data_ptr()
    count = len(fused._casts)
    del lin, first, again
    assert len(fused._casts) == count - 1  # dropped with its weight


def test_backward_uses_the_weight_copy_of_its_own_forward():
    from flava.model.config import EncoderConfig
    from flava.model.transformer import MLP

    torch.manual_seed(0)
    mlp = MLP(EncoderConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32))
    x = torch.randn(2, 3, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = mlp(x)
    (ref_x,) = torch.autograd.grad(ref.float().sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x)
    for w in (mlp.fc2.weight,):  # the cache now holds zeros, as if stale
        ref_, stamp, copy = fused._casts[id(w)]
        fused._casts[id(w)] = (ref_, stamp, torch.zeros_like(copy))
    (grad_x,) = torch.autograd.grad(out.float().sum(), x)
    assert torch.equal(grad_x, ref_x)


def test_layer_compiles_to_one_graph_and_matches_eager():
    """training.compile compiles each layer: the layer's recomputing functions and weight casts
    trace without a graph break (`fullgraph=True` raises on one), forward and backward."""
    from flava.model.config import EncoderConfig
    from flava.model.transformer import Layer

    torch.manual_seed(0)
    layer = Layer(EncoderConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64))
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    x = torch.randn(2, 5, 32, requires_grad=True)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., 3:] = False
    grad = torch.randn(2, 5, 32)
    params = (x, *layer.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = compiled(x, mask)
        ref, _ = layer(x, mask)
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2)
    grads = torch.autograd.grad(out, params, grad)
    ref_grads = torch.autograd.grad(ref, params, grad)
    for ours, theirs in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=3e-2, rtol=3e-2)


def test_compile_layers_leaves_room_for_every_variant_of_the_shared_forward():
    import torch._dynamo

    from flava.training.sharding import LAYER_VARIANTS, compile_layers, layers

    model = _model()
    compile_layers(model)  # lazy: nothing is compiled before a layer runs
    assert all(layer._compiled_call_impl is not None for layer in layers(model))
    config = torch._dynamo.config  # torch < 2.7 names the limit cache_size_limit
    limit = getattr(config, "recompile_limit", None) or config.cache_size_limit
    assert limit >= LAYER_VARIANTS > 8  # dynamo's default: 8


def test_explicit_attention_equals_sdpa_in_fp32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 11, 16, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 1, 11, dtype=torch.bool)
    mask[1, ..., 7:] = False
    out, probs = attention.explicit(q, k, v, mask, 0.0, False)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert float(probs[1, ..., 7:].abs().max()) == 0.0


def test_kernel_is_chosen_by_measurement(monkeypatch):
    assert attention.kernel("cpu", torch.float32) == "sdpa"  # unmeasured defaults
    assert attention.kernel("cpu", torch.bfloat16) == "explicit"
    assert attention.kernel("cuda", torch.bfloat16) == "sdpa"
    timings = iter([0.5, 0.1])  # sdpa measured slower than explicit
    monkeypatch.setattr(attention, "_time", lambda fn, repeats, device: (fn(), next(timings))[1])
    seconds = attention.choose(torch.device("cpu"), torch.float32, 2, 2, 5, 8)
    assert seconds == {"sdpa": 0.5, "explicit": 0.1}
    assert attention.kernel("cpu", torch.float32) == "explicit"
    assert attention.kernel("cpu", torch.bfloat16) == "explicit"  # another dtype: its default
    with pytest.raises(ValueError, match="attention kernel 'flash': expected one of sdpa"):
        attention.set_kernel("cpu", torch.float32, "flash")


def test_attention_shape_of_the_model():
    from flava.training.kernels import attention_shape, compute_dtype

    config = preset("tiny")
    heads = config.image.num_attention_heads
    shape = attention_shape(_model())
    assert shape == (heads, config.image.grid_size**2 + 1, config.image.hidden_size // heads)
    assert attention_shape(torch.nn.Linear(2, 2)) is None
    assert compute_dtype("bf16-mixed") == torch.bfloat16
    assert compute_dtype("16-mixed") == torch.float16
    assert compute_dtype("32-true") == torch.float32


def _photographs(size: int) -> torch.Tensor:
    """Real photographs shipped with scikit-image, resized to size x size, in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    images = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"):
        loader = getattr(data, name, None) or (lambda: data.stereo_motorcycle()[0])
        pixels = np.array(Image.fromarray(loader()).convert("RGB").resize((size, size)))
        images.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


def test_codebook_half_copy_is_kept_rebuilt_and_agrees_with_fp32_on_photographs():
    from flava.model.codebook import ImageCodebook

    torch.manual_seed(0)
    codebook = ImageCodebook(preset("tiny").codebook)
    pixels = _photographs(64)
    full = codebook.get_codebook_indices(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = codebook.get_codebook_indices(pixels)
        blocks = codebook._half_blocks(torch.bfloat16)
        assert codebook._half_blocks(torch.bfloat16) is blocks  # kept between steps
    assert blocks.input.weight.dtype == torch.bfloat16
    assert blocks.input.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(k.startswith("_half") for k in codebook.state_dict())
    assert sum(p.numel() for p in codebook.parameters()) == sum(
        p.numel() for p in blocks.parameters()
    )
    agreement = float((half == full).float().mean())
    assert agreement >= 0.9, agreement  # the argmax ids of bf16 and fp32 convolutions
    state = {k: torch.randn_like(v) for k, v in codebook.state_dict().items()}
    codebook.load_state_dict(state)  # new weights: a new copy
    assert codebook._half_blocks(torch.bfloat16) is not blocks
