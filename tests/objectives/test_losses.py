"""Losses against straightforward computations and against transformers' FlavaForPreTraining."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flava.model import FlavaForPreTraining, preset
from flava.objectives.losses import contrastive_loss, itm_loss, masked_prediction_loss
from flava.objectives.pretraining import (
    LossWeights,
    image_step,
    itm_pairing,
    mim_labels,
    pretraining_step,
    text_step,
    vl_step,
)


def naive_contrastive(image, text, log_scale):
    scale = log_scale.exp()
    loss = 0.0
    n = image.shape[0]
    for i in range(n):
        img = image[i] / image[i].norm()
        sims_i = torch.stack([scale * img @ (text[j] / text[j].norm()) for j in range(n)])
        txt = text[i] / text[i].norm()
        sims_t = torch.stack([scale * txt @ (image[j] / image[j].norm()) for j in range(n)])
        loss = loss + (-torch.log_softmax(sims_i, 0)[i] - torch.log_softmax(sims_t, 0)[i]) / 2
    return loss / n


def test_contrastive_matches_naive():
    image, text = torch.randn(6, 5), torch.randn(6, 5)
    for log_scale in (torch.tensor(2.6592), torch.tensor(4.6)):
        out = contrastive_loss(image, text, log_scale)
        torch.testing.assert_close(out["contrastive"], naive_contrastive(image, text, log_scale))


def test_logit_scale_is_clamped_as_stored_and_comes_back_down():
    """Past ln(100) after a step, the stored value is clamped; the gradient still flows at the
    bound (it was 0 above it with the clamp inside the loss), so a step can lower it again."""
    import math

    model = FlavaForPreTraining(preset("tiny"), codebook=None)
    scale = model.flava.logit_scale
    opt = torch.optim.SGD([scale], lr=1.0)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(6, 5, generator=g)
    with torch.no_grad():
        scale.fill_(math.log(100.0) - 0.01)
    (-scale.sum()).backward()  # a step that pushes the scale past the bound
    opt.step()
    assert scale.item() > math.log(100.0)
    model.flava.clamp_logit_scale_()
    assert scale.item() == pytest.approx(math.log(100.0))
    # shuffled pairs: the gradient at the bound is not 0 and lowers the scale
    opt.zero_grad()
    contrastive_loss(image, image.roll(1, 0), scale)["contrastive"].backward()
    assert scale.grad.item() > 0
    opt.step()
    model.flava.clamp_logit_scale_()
    assert scale.item() < math.log(100.0) - 0.01


def test_transformers_clamps_the_stored_scale_the_same_way(pair):
    import math

    hf, ours = pair
    batch = _batch(ours.config)
    kept = hf.flava.logit_scale.detach().clone(), ours.flava.logit_scale.detach().clone()
    try:
        hf.train()
        with torch.no_grad():
            hf.flava.logit_scale.fill_(6.0)
            _hf_step(hf, batch)
        assert hf.flava.logit_scale.item() == pytest.approx(math.log(100.0), abs=1e-4)
        with torch.no_grad():
            ours.flava.logit_scale.fill_(6.0)
        ours.flava.clamp_logit_scale_()
        assert ours.flava.logit_scale.item() == pytest.approx(hf.flava.logit_scale.item(), abs=1e-4)
    finally:
        hf.eval()
        with torch.no_grad():
            hf.flava.logit_scale.copy_(kept[0])
            ours.flava.logit_scale.copy_(kept[1])


def test_masked_prediction_runs_head_only_on_masked_positions():
    head = torch.nn.Linear(4, 7)
    calls = []
    head.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    hidden = torch.randn(2, 5, 4)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3], labels[1, 4] = 3, 6, 0
    loss = masked_prediction_loss(head, hidden, labels)
    assert calls == [3]
    full = head(hidden)  # reference: every position, then ignore_index
    ref = F.cross_entropy(full.reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref)
    none = masked_prediction_loss(head, hidden, torch.full((2, 5), -100))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="differ"):
        masked_prediction_loss(head, hidden, labels[:, :3])


def test_itm_loss_and_pairing():
    logits = torch.randn(4, 2)
    labels = torch.tensor([1, 0, 0, 1])
    out = itm_loss(logits, labels)
    torch.testing.assert_close(out["itm"], F.cross_entropy(logits, labels))
    g = torch.Generator().manual_seed(0)
    index, lab = itm_pairing(64, 0.5, g, torch.device("cpu"))
    assert ((index == torch.arange(64)) == lab.bool()).all()  # negatives never keep their text
    assert 16 < int(lab.sum()) < 48
    index, lab = itm_pairing(8, 0.0, g, torch.device("cpu"))
    assert lab.all() and torch.equal(index, torch.arange(8))
    index, lab = itm_pairing(1, 0.9, g, torch.device("cpu"))
    assert lab.tolist() == [1]


def _batch(config, b=4, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = config.image.image_size
    n = config.image.grid_size**2
    ids = torch.randint(1000, 2000, (b, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, 6:] = 0
    ids[0, 6:] = 0
    ids[0, 5] = 102
    selected = (torch.rand(b, length, generator=g) < 0.3) & (ids > 102)
    selected[:, 1] = True
    masked_ids = ids.masked_fill(selected, 103)
    return {
        "pixel_values": torch.randn(b, 3, size, size, generator=g),
        "bool_masked_pos": torch.rand(b, n, generator=g) < 0.4,
        "input_ids": ids,
        "attention_mask": mask,
        "input_ids_masked": masked_ids,
        "mlm_labels": ids.masked_fill(~selected, -100),
        "targets": torch.randint(0, config.image.vocab_size, (b, n), generator=g),
    }


@pytest.fixture(scope="module")
def pair():
    transformers = pytest.importorskip("transformers")
    from flava.checkpoints.hf_keys import (
        flava_config_from_transformers,
        flava_state_from_transformers,
    )

    shape = dict(hidden_size=32, num_attention_heads=4, intermediate_size=48)
    hf_cfg = transformers.FlavaConfig(
        image_config=dict(num_hidden_layers=2, image_size=32, patch_size=8, vocab_size=50, **shape),
        text_config=dict(num_hidden_layers=2, vocab_size=2100, max_position_embeddings=20, **shape),
        multimodal_config=dict(num_hidden_layers=1, **shape),
        image_codebook_config=dict(hidden_size=8, vocab_size=50, num_blocks_per_group=1),
        projection_dim=16,
        hidden_size=32,
    )
    torch.manual_seed(0)
    hf = transformers.FlavaForPreTraining(hf_cfg).eval()
    mapped, _, _ = flava_state_from_transformers(hf.state_dict())
    ours = FlavaForPreTraining(flava_config_from_transformers(hf_cfg.to_dict()), codebook=None)
    ours.load_state_dict(mapped, strict=True)
    return hf, ours.eval()


def _hf_step(hf, batch: dict[str, torch.Tensor], **extra):
    """transformers' FlavaForPreTraining on a pair batch, every pair matched."""
    return hf(
        input_ids=batch["input_ids"],
        input_ids_masked=batch["input_ids_masked"],
        pixel_values=batch["pixel_values"],
        attention_mask=batch["attention_mask"],
        bool_masked_pos=batch["bool_masked_pos"],
        mlm_labels=batch["mlm_labels"].clone(),
        mim_labels=batch["targets"].clone(),
        itm_labels=torch.ones(4, dtype=torch.long),
        **extra,
    )


def test_vl_losses_match_transformers(pair):
    hf, ours = pair
    batch = _batch(ours.config)
    with torch.no_grad():
        ref = _hf_step(hf, batch, return_loss=True).loss_info
        out = vl_step(ours, batch, lambda b: b["targets"], LossWeights(), negative_probability=0.0)
    for ours_key, hf_key in [
        ("contrastive", "global_contrastive"),
        ("itm", "itm"),
        ("mmm_image", "mmm_image"),
        ("mmm_text", "mmm_text"),
    ]:
        torch.testing.assert_close(out[ours_key], ref[hf_key], atol=1e-5, rtol=1e-5)
    total = sum(out[k] for k in ("contrastive", "itm", "mmm_image", "mmm_text"))
    torch.testing.assert_close(out["loss"], total)


def test_unimodal_losses_match_transformers(pair):
    hf, ours = pair
    batch = _batch(ours.config, seed=1)
    with torch.no_grad():
        ref_mim = hf(
            pixel_values=batch["pixel_values"],
            bool_masked_pos=batch["bool_masked_pos"],
            mim_labels=batch["targets"].clone(),
            return_loss=True,
        ).loss_info.mim
        ref_mlm = hf(
            input_ids=batch["input_ids"],
            input_ids_masked=batch["input_ids_masked"],
            attention_mask=batch["attention_mask"],
            mlm_labels=batch["mlm_labels"].clone(),
            return_loss=True,
        ).loss_info.mlm
        mim = image_step(ours, batch, lambda b: b["targets"], LossWeights())
        mlm = text_step(ours, batch, LossWeights())
    torch.testing.assert_close(mim["mim"], ref_mim, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mlm["mlm"], ref_mlm, atol=1e-5, rtol=1e-5)
    assert set(mim) == {"mim", "loss"} and set(mlm) == {"mlm", "loss"}


@pytest.mark.slow
@pytest.mark.parametrize("p_negative", [0.0, 0.5, 0.99])
def test_itm_label_mixes_train(p_negative):
    model = FlavaForPreTraining(preset("tiny"), codebook=None)
    batch = _batch(model.config, b=6)
    out = vl_step(
        model,
        batch,
        lambda b: b["targets"],
        LossWeights(),
        p_negative,
        torch.Generator().manual_seed(3),
    )
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert model.itm_head.classifier.weight.grad is not None


@pytest.mark.slow
def test_all_negative_batch_skips_mmm_and_weights_switch_objectives_off():
    model = FlavaForPreTraining(preset("tiny"), codebook=None)
    batch = _batch(model.config, b=5)
    out = vl_step(
        model,
        batch,
        lambda b: b["targets"],
        LossWeights(),
        0.999999,
        torch.Generator().manual_seed(0),
    )
    assert "itm" in out and "mmm_text" not in out and "mmm_image" not in out
    only = LossWeights(mim=0, mlm=0, mmm_image=0, mmm_text=0, itm=0, contrastive=1)
    out = pretraining_step(model, batch, "vl", None, only)
    assert set(out) == {"contrastive", "contrastive_accuracy", "loss"}
    weighted = LossWeights(contrastive=0.5, itm=0, mmm_image=0, mmm_text=0)
    out = vl_step(model, batch, None, weighted)
    torch.testing.assert_close(out["loss"], 0.5 * out["contrastive"])
    with pytest.raises(ValueError, match="kind"):
        pretraining_step(model, batch, "audio", None, LossWeights())


def test_vl_step_runs_codebook_targets_before_any_encoder():
    # The codebook's feature maps must come and go before the encoders hold activations for the
    # backward pass, or they add to the step's peak memory.
    model = FlavaForPreTraining(preset("tiny"), codebook=None)
    batch = _batch(model.config, b=4)
    calls = []
    for name in ("image_encoder", "text_encoder"):
        getattr(model.flava, name).register_forward_pre_hook(lambda *_, n=name: calls.append(n))

    def targets(b):
        calls.append("targets")
        return b["targets"]

    out = vl_step(model, batch, targets, LossWeights(), negative_probability=0.0)
    assert "mmm_image" in out
    assert calls[0] == "targets" and calls.count("targets") == 1
    assert calls.count("image_encoder") == 2 and calls.count("text_encoder") == 2


def test_mim_labels_keep_only_masked():
    t = torch.arange(6).reshape(1, 6)
    m = torch.tensor([[True, False, True, False, False, True]])
    assert mim_labels(t, m).tolist() == [[0, -100, 2, -100, -100, 5]]


def test_image_text_logits_are_what_the_contrastive_loss_scores():
    """FlavaModel.image_text_logits: [Bi, Bt] cosine x exp(logit_scale) (at most 100); on a
    matched batch its two cross-entropies are the contrastive loss."""
    from flava.model import FlavaModel, preset

    torch.manual_seed(0)
    model = FlavaModel(preset("tiny")).eval()
    pixels = torch.randn(3, 3, 64, 64)
    ids = torch.randint(1000, 2000, (3, 9))
    with torch.no_grad():
        model.logit_scale.fill_(1.5)
        logits = model.image_text_logits(pixels, ids)
        loss = contrastive_loss(
            model.encode_image(pixels), model.encode_text(ids), model.logit_scale
        )
        wider = model.image_text_logits(pixels[:2], torch.randint(1000, 2000, (5, 7)))
        model.logit_scale.fill_(10.0)  # past ln 100: used clamped, as training keeps it
        capped = model.image_text_logits(pixels, ids)
    labels = torch.arange(3)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(expected, loss["contrastive"])
    assert wider.shape == (2, 5)
    torch.testing.assert_close(capped, logits * 100 / math.exp(1.5))
