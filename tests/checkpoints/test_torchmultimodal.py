"""Parity with the original release (TorchMultimodal's FLAVA), randomly initialised at a tiny size:
its files convert to ours and back, and both compute the same hidden states, embeddings, head
logits and each of the five losses (by TorchMultimodal's own FLAVAPretrainingLoss and ours).

Its multimodal encoder gets no attention mask (padded text attends to its padding there), so
the multimodal comparisons use text without padding; the text encoder masks padding in both.
Its pretraining heads' LayerNorms use eps 1e-5 (FLAVAPretrainingLoss's default), ours by default
the encoders' 1e-12 (transformers'); converted models keep 1e-5 (`head_layer_norm_eps`), which
`test_head_layer_norm_eps_is_kept` checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

tmm = pytest.importorskip(
    "torchmultimodal.models.flava.model",
    reason="torchmultimodal is not installed (pip install --no-deps torchmultimodal-nightly)",
)
from torchmultimodal.modules.losses.flava import FLAVAPretrainingLoss  # noqa: E402

from flava.checkpoints import CheckpointError, from_pretrained, load_finetuned, save_pretrained  # noqa: E402
from flava.checkpoints.init_from import init_from  # noqa: E402
from flava.checkpoints.torchmultimodal import export_torchmultimodal  # noqa: E402
from flava.convert import main as convert  # noqa: E402
from flava.model import FlavaForPreTraining, FlavaModel  # noqa: E402
from flava.model.codebook import ImageCodebook  # noqa: E402
from flava.objectives.pretraining import (  # noqa: E402
    LossWeights,
    image_step,
    itm_pairing,
    text_step,
    vl_step,
)

B, LENGTH, TEXT_VOCAB, IMAGE_VOCAB, WIDTH, HEADS = 4, 9, 100, 64, 128, 2
"""HEADS = WIDTH / 64: what a file read without a head count is taken to have."""
SHAPE = dict(
    image_hidden_size=WIDTH,
    image_num_attention_heads=HEADS,
    image_num_hidden_layers=2,
    image_intermediate_size=150,
    image_size=32,
    patch_size=8,
    text_hidden_size=WIDTH,
    text_num_attention_heads=HEADS,
    text_num_hidden_layers=2,
    text_intermediate_size=150,
    vocab_size=TEXT_VOCAB,
    max_position_embeddings=20,
    multimodal_hidden_size=WIDTH,
    multimodal_num_attention_heads=HEADS,
    multimodal_num_hidden_layers=2,
    multimodal_intermediate_size=150,
    text_and_image_proj_size=24,
)
IGNORE_TMM, IGNORE_OURS, MASK_ID = -1, -100, 3


def randomise(module: nn.Module, seed: int = 1) -> None:
    """Every tensor random (LayerNorm weights around 1), the log-scale inside its clamp."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(1.0)
        for name, p in module.named_parameters():
            if name.endswith("logit_scale"):
                p.fill_(2.0)


def tmm_codebook() -> nn.Module:
    """TorchMultimodal's DALL-E encoder, small, built without its download."""
    codebook = tmm.DalleVAEEncoder(pretrained=False)
    codebook.encoder = tmm.DalleEncoder(n_hid=8, n_blk_per_group=1, vocab_size=IMAGE_VOCAB)
    return codebook


def tmm_pretraining(head_eps: float = 1e-5) -> nn.Module:
    loss = FLAVAPretrainingLoss(
        hidden_size=WIDTH,
        text_vocab_size=TEXT_VOCAB,
        image_vocab_size=IMAGE_VOCAB,
        layer_norm_eps=head_eps,
    )
    model = tmm.FLAVAForPreTraining(tmm.flava_model(**SHAPE), tmm_codebook(), loss)
    randomise(model)
    return model.eval()


def save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[nn.Module, FlavaForPreTraining]:
    """TorchMultimodal's FLAVAForPreTraining and ours converted from its saved state dict."""
    tmp = tmp_path_factory.mktemp("tmm")
    theirs = tmm_pretraining()
    src = save(theirs.state_dict(), tmp / "flava_for_pretraining.pt")
    assert convert([str(src), str(tmp / "ours"), "--num-heads", str(HEADS)]) == 0
    ours = from_pretrained(FlavaForPreTraining, tmp / "ours")
    assert ours.codebook is not None
    return theirs, ours.eval()


def batch(padded: bool, seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TEXT_VOCAB, (B, LENGTH), generator=g)
    mask = torch.ones(B, LENGTH, dtype=torch.long)
    if padded:
        mask[1, 6:] = mask[2, 4:] = 0
        ids[mask == 0] = 0
    chosen = (torch.rand(B, LENGTH, generator=g) < 0.3) & mask.bool()
    chosen[:, 1] = True
    return {
        "pixel_values": torch.randn(B, 3, 32, 32, generator=g),
        "codebook_pixel_values": torch.rand(B, 3, 32, 32, generator=g),
        "bool_masked_pos": torch.rand(B, 16, generator=g) < 0.4,
        "input_ids": ids,
        "input_ids_masked": ids.masked_fill(chosen, MASK_ID),
        "attention_mask": mask,
        "mlm_labels": ids.masked_fill(~chosen, IGNORE_OURS),
    }


def close(mine: torch.Tensor, theirs: torch.Tensor, what: str, seen: dict) -> None:
    seen[what] = float((mine - theirs).detach().abs().max())
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0, msg=lambda m: f"{what}: {m}")


def test_encoders_and_embeddings_match(pair):
    theirs, ours = pair
    seen: dict[str, float] = {}
    text, plain = batch(padded=True), batch(padded=False)
    with torch.no_grad():
        image_t, image_emb = theirs.model.encode_image(text["pixel_values"], projection=True)
        text_t, text_emb = theirs.model.encode_text(text["input_ids"], projection=True)
        out = ours.flava(
            text["pixel_values"],
            text["input_ids"],
            text["attention_mask"],
            output_hidden_states=True,
        )
        for name, a, b in (("image", out.image, image_t), ("text", out.text, text_t)):
            for i, (mine, ref) in enumerate(zip(a.hidden_states, b.hidden_states, strict=True)):
                close(mine, ref, f"{name} hidden state {i}", seen)
            close(a.last_hidden_state, b.last_hidden_state, f"{name} last hidden state", seen)
            encoder = getattr(ours.flava, f"{name}_encoder")
            close(encoder.pooler(a.last_hidden_state), b.pooler_output, f"{name} pooler", seen)
        close(ours.flava.image_embedding(out.image), image_emb, "image embedding", seen)
        close(ours.flava.text_embedding(out.text), text_emb, "text embedding", seen)
        # the fused sequence of the masked pair, without padding (see the module docstring)
        ref = theirs.model(
            image=plain["pixel_values"],
            text=plain["input_ids"],
            image_patches_mask=plain["bool_masked_pos"],
            text_masked=plain["input_ids_masked"],
        ).multimodal_masked
        image_m = ours.flava.image_encoder(plain["pixel_values"], plain["bool_masked_pos"])
        text_m = ours.flava.text_encoder(plain["input_ids_masked"])
        fused = ours.flava.fuse(image_m, text_m, output_hidden_states=True)
    for i, (mine, theirs_state) in enumerate(
        zip(fused.hidden_states, ref.hidden_states, strict=True)
    ):
        close(mine, theirs_state, f"multimodal hidden state {i}", seen)
    close(fused.last_hidden_state, ref.last_hidden_state, "multimodal last hidden state", seen)
    close(
        ours.flava.multimodal_encoder.pooler(fused.last_hidden_state),
        ref.pooler_output,
        "mm pooler",
        seen,
    )
    print("max differences:", seen)


def test_head_logits_match(pair):
    theirs, ours = pair
    seen: dict[str, float] = {}
    x = torch.randn(5, 7, WIDTH, generator=torch.Generator().manual_seed(3))
    loss = theirs.loss
    with torch.no_grad():
        for mine, ref in (
            ("mlm_head", loss.mlm_loss.cls),
            ("mim_head", loss.mim_loss.cls),
            ("mmm_text_head", loss.mmm_loss.mlm.cls),
            ("mmm_image_head", loss.mmm_loss.mim.cls),
        ):
            close(getattr(ours, mine)(x), ref(x), mine, seen)
        itm = loss.itm_loss
        close(ours.itm_head(x), itm.cls(itm.pooler(x)), "itm_head", seen)
        cpx = batch(padded=False)["codebook_pixel_values"]
        ids = theirs.image_codebook(ImageCodebook.map_pixels(cpx)).flatten(1)
        assert torch.equal(ours.codebook.get_codebook_indices(cpx), ids)
    print("max differences:", seen)


def targets_of(ours: FlavaForPreTraining):
    return lambda b: ours.codebook.get_codebook_indices(b["codebook_pixel_values"])


def tmm_inputs(b: dict[str, torch.Tensor], index: torch.Tensor | None = None) -> dict:
    """TorchMultimodal's forward arguments for the same batch (texts taken in `index` order)."""
    index = torch.arange(B) if index is None else index
    return {
        "image": b["pixel_values"],
        "image_for_codebook": ImageCodebook.map_pixels(b["codebook_pixel_values"]),
        "image_patches_mask": b["bool_masked_pos"],
        "text": b["input_ids"][index],
        "text_masked": b["input_ids_masked"][index],
        "mlm_labels": b["mlm_labels"][index].masked_fill(
            b["mlm_labels"][index] == IGNORE_OURS, IGNORE_TMM
        ),
    }


def test_unimodal_losses_match(pair):
    """MIM on an image batch, MLM on a padded text batch."""
    theirs, ours = pair
    seen: dict[str, float] = {}
    b = batch(padded=True)
    args = tmm_inputs(b)
    with torch.no_grad():
        mim = theirs(
            image=args["image"],
            image_for_codebook=args["image_for_codebook"],
            image_patches_mask=args["image_patches_mask"],
        ).losses.mim_loss
        mlm = theirs(text_masked=args["text_masked"], mlm_labels=args["mlm_labels"]).losses.mlm_loss
        mine_mim = image_step(ours, b, targets_of(ours), LossWeights())["mim"]
        mine_mlm = text_step(ours, b, LossWeights())["mlm"]
    close(mine_mim, mim, "MIM loss", seen)
    close(mine_mlm, mlm, "MLM loss", seen)
    print("max differences:", seen)


def test_pair_losses_match(pair):
    """Contrastive, ITM and both MMM losses on matched pairs (text without padding)."""
    theirs, ours = pair
    seen: dict[str, float] = {}
    b = batch(padded=False)
    with torch.no_grad():
        ref = theirs(**tmm_inputs(b), itm_labels=torch.ones(B, dtype=torch.long)).losses
        mine = vl_step(ours, b, targets_of(ours), LossWeights(), negative_probability=0.0)
    close(mine["contrastive"], ref.global_contrastive_loss, "global contrastive loss", seen)
    close(mine["itm"], ref.itm_loss, "ITM loss", seen)
    close(mine["mmm_image"], ref.mmm_image_loss, "MMM image loss", seen)
    close(mine["mmm_text"], ref.mmm_text_loss, "MMM text loss", seen)
    print("max differences:", seen)


def test_losses_with_itm_negatives_match(pair):
    """ITM with swapped captions, MMM on the matched pairs only. (TorchMultimodal's data module
    swaps the captions, and its contrastive loss then keeps the matched rows of that batch; ours
    contrasts the unswapped batch, so contrastive is compared in the test above.)"""
    theirs, ours = pair
    seen: dict[str, float] = {}
    b = batch(padded=False)
    index, labels = itm_pairing(B, 0.5, torch.Generator().manual_seed(5), torch.device("cpu"))
    assert 0 < int(labels.sum()) < B, "the seed should give both matched and swapped pairs"
    with torch.no_grad():
        ref = theirs(**tmm_inputs(b, index), itm_labels=labels).losses
        mine = vl_step(
            ours, b, targets_of(ours), LossWeights(), 0.5, torch.Generator().manual_seed(5)
        )
    for name, theirs_loss in (
        ("itm", ref.itm_loss),
        ("mmm_image", ref.mmm_image_loss),
        ("mmm_text", ref.mmm_text_loss),
    ):
        close(mine[name], theirs_loss, f"{name} loss with negatives", seen)
    print("max differences:", seen)


def test_head_layer_norm_eps_is_kept():
    """The release's heads normalise with eps 1e-5 (ours by default with the encoders'): the
    converted model keeps it, so its head logits match."""
    theirs = tmm_pretraining(head_eps=1e-5)
    from flava.checkpoints.tmm_keys import config_from_torchmultimodal, state_from_torchmultimodal
    from flava.checkpoints.torchmultimodal import build_from_torchmultimodal

    mapped = state_from_torchmultimodal(theirs.state_dict(), "test")
    ours = build_from_torchmultimodal(config_from_torchmultimodal(mapped, "test", HEADS), mapped)
    x = torch.randn(5, 7, WIDTH, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert ours.mlm_head.norm.eps == ours.mim_head.norm.eps == 1e-5
        assert ours.flava.text_encoder.norm.eps == 1e-12
        torch.testing.assert_close(ours.mlm_head(x), theirs.loss.mlm_loss.cls(x), atol=1e-5, rtol=0)


def test_round_trip_loads_strictly_into_torchmultimodal(pair, tmp_path):
    theirs, ours = pair
    out = export_torchmultimodal(ours, tmp_path / "back.pt")
    fresh = tmm_pretraining()
    state = torch.load(out, map_location="cpu", weights_only=True)
    fresh.load_state_dict(state, strict=True)
    for key, value in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # and through the command, from our directory
    save_pretrained(ours, tmp_path / "ours")
    assert (
        convert([str(tmp_path / "ours"), str(tmp_path / "cmd.pt"), "--to", "torchmultimodal"]) == 0
    )
    fresh.load_state_dict(torch.load(tmp_path / "cmd.pt", weights_only=True), strict=True)


def test_flava_model_file_lightning_checkpoints_and_init_from(pair, tmp_path):
    """FLAVAModel's state dict and train.py's Lightning checkpoint (every key under one more
    `model.`) load through from_pretrained (model.pretrained_model_key), init_from and the
    command, to the same weights."""
    theirs, ours = pair
    expected = ours.state_dict()
    encoders = save(theirs.model.state_dict(), tmp_path / "flava_model.pt")
    model = from_pretrained(FlavaModel, encoders)  # no log-scale in a FLAVAModel: log(1/0.07)
    in_folder = from_pretrained(FlavaModel, tmp_path).state_dict()  # a directory holding the .pt
    assert all(torch.equal(v, in_folder[k]) for k, v in model.state_dict().items())
    for key, value in model.state_dict().items():
        if key != "logit_scale":
            assert torch.equal(value, expected[f"flava.{key}"]), key
    lightning = {"state_dict": {f"model.{k}": v for k, v in theirs.state_dict().items()}}
    ckpt = save({**lightning, "global_step": 7, "epoch": 0}, tmp_path / "epoch=0-step=7.ckpt")
    again = from_pretrained(FlavaForPreTraining, tmp_path / "epoch=0-step=7.ckpt")
    assert all(torch.equal(v, expected[k]) for k, v in again.state_dict().items())
    assert convert([str(ckpt), str(tmp_path / "from_ckpt")]) == 0
    assert from_pretrained(FlavaForPreTraining, tmp_path / "from_ckpt").config == ours.config
    target = FlavaForPreTraining(ours.config, codebook=None)
    report = init_from(target, "text_encoder", str(ckpt))
    assert report.layout == "torchmultimodal" and not report.unfilled
    assert torch.equal(
        target.flava.text_encoder.word_embed.weight, ours.flava.text_encoder.word_embed.weight
    )


def test_classification_checkpoint_becomes_a_finetuned_directory(tmp_path, capsys):
    """finetune.py's Lightning checkpoint (FLAVAForClassification under `model.`): the classifier
    MLP maps onto our head; our fine-tuned model/ directory gives the same logits."""
    theirs = tmm.flava_model_for_classification(
        num_classes=3,
        classifier_in_dim=WIDTH,
        classifier_hidden_sizes=16,
        pretrained=False,
        **SHAPE,
    )
    randomise(theirs)
    theirs.eval()
    state = {f"model.{k}": v for k, v in theirs.state_dict().items()}
    ckpt = save({"state_dict": state}, tmp_path / "finetune.ckpt")
    assert convert([str(ckpt), str(tmp_path / "model")]) == 2  # which encoder: not in weights
    assert "--modality" in capsys.readouterr().err
    assert convert([str(ckpt), str(tmp_path / "model"), "--modality", "multimodal"]) == 0
    model, info = load_finetuned(tmp_path / "model")
    assert info["num_outputs"] == 3 and info["pooling"] == "cls" and info["act"] == "relu"
    b = batch(padded=False)
    with torch.no_grad():
        ref = theirs(
            image=b["pixel_values"],
            text=b["input_ids"],
            required_embedding="mm",
            labels=torch.zeros(B, dtype=torch.long),
        )
        mine = model.eval()(pixel_values=b["pixel_values"], input_ids=b["input_ids"])
    torch.testing.assert_close(mine, ref.logits, atol=1e-5, rtol=0)


class SystemCall:
    """Pickles as os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_unsafe_and_unknown_files_are_refused_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = save({"state_dict": {"x": SystemCall(f"touch {marker}")}}, tmp_path / "evil.pt")
    odd = save({"weird.thing": torch.zeros(2)}, tmp_path / "odd.pt")
    for path, needle in ((evil, "refused to unpickle"), (odd, "no layout this reads")):
        assert convert([str(path), str(tmp_path / "out"), "--from", "torchmultimodal"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(path) in err
        assert needle in err, err
        with pytest.raises(CheckpointError, match=needle) as info:
            from_pretrained(FlavaModel, path)
        assert "\n" not in str(info.value)
    assert not marker.exists()


def test_head_count_must_divide_a_width_not_of_64(tmp_path, capsys):
    theirs = tmm.flava_model(**{**SHAPE, "text_hidden_size": 48, "text_intermediate_size": 50})
    path = save(theirs.state_dict(), tmp_path / "narrow.pt")
    assert convert([str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "48 wide" in err and "--num-heads" in err and len(err.strip().splitlines()) == 1
    assert convert([str(path), str(tmp_path / "out"), "--num-heads", "4"]) == 0
    assert from_pretrained(FlavaModel, tmp_path / "out").config.text.num_attention_heads == 4
