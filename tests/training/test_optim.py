"""AdamW's parameter groups: weight decay, `training.lr_multipliers`, and the resume keying."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from flava.checkpoints.io import CheckpointError
from flava.checkpoints.run_dir import RunDir
from flava.config import ConfigError
from flava.config.common import TrainingConfig
from flava.config.loader import from_fields
from flava.training.optim import adamw_with_schedule, decay_groups, param_groups
from flava.training.resume import resume_for_strategy


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flava = nn.Module()
        self.flava.image_encoder = nn.Linear(3, 3)
        self.flava.image_encoder2 = nn.Linear(3, 3)  # shares a string prefix, not a module
        self.head = nn.Linear(3, 2)


def _training(**overrides) -> TrainingConfig:
    overrides = {"weight_decay_groups": "matrices", **overrides}
    return from_fields(
        TrainingConfig, {"learning_rate": 1e-3, "adam_weight_decay": 0.05, **overrides}
    )


def _lrs(groups, base: float) -> dict[str, float]:
    return {name: options.get("lr", base) for options, named in groups for name, _ in named}


def test_without_multipliers_the_two_decay_groups_are_unchanged():
    model = Toy()
    groups = param_groups(model.named_parameters(), _training())
    decay, no_decay = decay_groups(model.named_parameters(), "matrices")
    assert [options for options, _ in groups] == [{"weight_decay": 0.05}, {"weight_decay": 0.0}]
    assert [n for n, _ in groups[0][1]] == [n for n, _ in decay]
    assert [n for n, _ in groups[1][1]] == [n for n, _ in no_decay]


def test_the_longest_prefix_sets_each_parameters_learning_rate():
    t = _training(lr_multipliers={"flava.image_encoder": 0.25, "flava": 2.0})
    groups = param_groups(Toy().named_parameters(), t)
    lrs = _lrs(groups, 1e-3)
    assert lrs["flava.image_encoder.weight"] == lrs["flava.image_encoder.bias"] == 2.5e-4
    assert lrs["flava.image_encoder2.weight"] == lrs["flava.image_encoder2.bias"] == 2e-3
    assert lrs["head.weight"] == lrs["head.bias"] == 1e-3
    decays = {n: o["weight_decay"] for o, named in groups for n, _ in named}
    assert decays["flava.image_encoder.weight"] == 0.05 and decays["flava.image_encoder.bias"] == 0
    assert sorted(lrs) == sorted(n for n, _ in Toy().named_parameters())  # each exactly once


def test_warm_up_and_decay_keep_the_multipliers_ratio():
    model = Toy()
    t = _training(lr_multipliers={"flava.image_encoder": 0.25}, warmup_steps=2)
    out = adamw_with_schedule(model.named_parameters(), t, torch.device("cpu"), max_steps=10)
    optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    bases = []
    for _ in range(5):
        model.head(model.flava.image_encoder(torch.ones(1, 3))).sum().backward()
        optimizer.step()
        scheduler.step()
        bases.append(optimizer.param_groups[0]["lr"])
        for group in optimizer.param_groups[2:]:  # the image encoder's two groups
            assert group["lr"] == pytest.approx(0.25 * bases[-1])
    assert bases[-1] < bases[2] < bases[1] == pytest.approx(1e-3)  # warmed up, then decaying


@pytest.mark.parametrize("prefix", ["flava.imag_encoder", "flava.image", "head.weight.x"])
def test_a_prefix_naming_no_parameter_is_refused_in_one_line(prefix):
    with pytest.raises(ConfigError, match=rf"lr_multipliers: '{prefix}' names no parameter"):
        param_groups(Toy().named_parameters(), _training(lr_multipliers={prefix: 0.5}))


def test_the_dotlist_mapping_and_nonpositive_multipliers(tmp_path):
    from flava.config.loader import load_config
    from flava.config.pretraining import RunConfig, validate

    base = ["config=pretraining/demo.yaml", f"training.run_dir={tmp_path}"]
    cfg = load_config(
        [*base, "training.lr_multipliers={flava.image_encoder: 0.25}"], RunConfig, validate
    )
    assert dict(cfg.training.lr_multipliers) == {"flava.image_encoder": 0.25}
    with pytest.raises(ConfigError, match="training.lr_multipliers.*must be > 0"):
        load_config([*base, "training.lr_multipliers={flava: 0}"], RunConfig, validate)


def test_resume_keys_the_optimizer_state_by_name_across_multiplier_groups(tmp_path):
    model = Toy()
    t = _training(lr_multipliers={"flava.image_encoder": 0.25})
    optimizer = adamw_with_schedule(model.named_parameters(), t, torch.device("cpu"), 10)
    optimizer = optimizer["optimizer"]
    model.head(model.flava.image_encoder(torch.ones(1, 3))).sum().backward()
    optimizer.step()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "optimizer_states": [optimizer.state_dict()]}, path)
    module = SimpleNamespace(model=model, cfg=SimpleNamespace(training=t))
    converted = torch.load(resume_for_strategy(str(path), "fsdp", module, RunDir(tmp_path)))
    state = converted["optimizer_states"][0]["state"]
    for name, p in model.named_parameters():
        expected = optimizer.state.get(p)
        entry = state[f"model.{name}"]
        assert entry["exp_avg"].shape == p.shape
        if expected is not None:
            assert torch.equal(entry["exp_avg"], expected["exp_avg"])


@pytest.mark.parametrize("strategy", ["auto", "fsdp"])
def test_resume_with_other_multiplier_groups_is_refused_in_one_line(tmp_path, strategy):
    model = Toy()
    saved = _training(lr_multipliers={"flava.image_encoder": 0.25})  # four groups
    optimizer = adamw_with_schedule(model.named_parameters(), saved, torch.device("cpu"), 10)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "optimizer_states": [optimizer["optimizer"].state_dict()]}, path)
    module = SimpleNamespace(model=model, cfg=SimpleNamespace(training=_training()))
    with pytest.raises(CheckpointError) as refused:
        resume_for_strategy(str(path), strategy, module, RunDir(tmp_path))
    message = str(refused.value)
    assert "\n" not in message and str(path) in message
    assert "groups of [2, 2, 1, 1] parameters, this run's [3, 3]" in message
    assert "training.lr_multipliers and training.weight_decay_groups it was saved" in message
    same = SimpleNamespace(model=model, cfg=SimpleNamespace(training=saved))
    assert resume_for_strategy(str(path), "auto", same, RunDir(tmp_path)) == str(path)


def test_weight_decay_groups():
    """all (the default, the original release's): every trainable parameter decayed, the logit
    scale and the norms included; matrices: no 1-D tensor nor image token / position, but the
    text encoder's embedding tables."""
    from flava.model import FlavaForPreTraining, preset

    model = FlavaForPreTraining(preset("tiny"), codebook=None)
    model.flava.text_encoder.word_embed.weight.requires_grad_(False)
    decay, no_decay = decay_groups(model.named_parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, _ in decay] == trainable and not no_decay
    assert TrainingConfig().weight_decay_groups == "all"
    decay, no_decay = decay_groups(model.named_parameters(), "matrices")
    skipped = {n for n, _ in no_decay}
    assert {
        "flava.logit_scale",
        "flava.image_encoder.cls_token",
        "flava.image_encoder.pos_embed",
        "flava.image_encoder.mask_token",
        "flava.multimodal_encoder.cls_token",
        "mim_head.decoder.bias",
        "flava.text_encoder.embed_norm.weight",
    } <= skipped
    decayed = {n for n, _ in decay}
    assert {
        "flava.text_encoder.pos_embed.weight",
        "flava.text_encoder.type_embed.weight",
        "flava.image_encoder.patch_embed.weight",
    } <= decayed
    assert len(decayed) + len(skipped) == len(trainable)
    assert all(p.ndim >= 2 for _, p in decay)
