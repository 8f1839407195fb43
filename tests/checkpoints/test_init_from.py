"""`model.init_from`: parity with transformers' ViTModel and timm's VisionTransformer (randomly
initialised at the tiny preset's image shape), the key table, refusals, position resizing, run
directories bit for bit, and a training run that starts from the loaded weights.

LayerNorm epsilons: the model keeps its own (1e-12) and the table notes a source's other one
(timm's ViTs: 1e-6). The parity tests build the references with the model's epsilon, so that they
compare the mapping alone, to 1e-5; `test_another_source_epsilon_is_noted_and_kept` measures what
the epsilon changes: about (eps_source - eps_model) / (2 var) of each normalised value, 1e-5 or
more only for rows of variance under ~0.05 (here the class token's: up to ~7e-5 after the layers).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import pytest
import torch
import torch.nn.functional as F

from flava.checkpoints import CheckpointError, export_transformers, save_pretrained
from flava.checkpoints.init_from import LAYOUTS, fold_keys, format_init_reports, init_from
from flava.config import ConfigError, RunConfig, load_config, validate
from flava.config.pretraining import InitLayout
from flava.model import FlavaForPreTraining, preset
from flava.model.encoders import ImageEncoder
from flava.training.factory import build_pretraining_model

from ..training.test_train import SMALL

transformers = pytest.importorskip("transformers")

TINY = preset("tiny")


def randomise(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every tensor random (norm weights around 1), so that no mapping error hides in zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(noise + (1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0))
    return module.eval()


def vit_model(hidden=None, layers=None, image_size=None, eps=1e-12):
    """A transformers ViTModel shaped like DINO ViT-B/16, at the tiny preset's size."""
    image = TINY.image
    config = transformers.ViTConfig(
        hidden_size=hidden or image.hidden_size,
        num_hidden_layers=layers or image.num_hidden_layers,
        num_attention_heads=image.num_attention_heads,
        intermediate_size=4 * (hidden or image.hidden_size),
        image_size=image_size or image.image_size,
        patch_size=image.patch_size,
        layer_norm_eps=eps,
    )
    return randomise(transformers.ViTModel(config))


def tiny_model(image_size: int | None = None) -> FlavaForPreTraining:
    config = TINY
    if image_size is not None:
        config = dataclasses.replace(
            config, image=dataclasses.replace(config.image, image_size=image_size)
        )
    return FlavaForPreTraining(config, codebook=None).eval()


def pixels(size: int = 64) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_vit_hidden_states_match(tmp_path):
    vit = vit_model()
    vit.save_pretrained(tmp_path / "vit")
    model = tiny_model()
    report = init_from(model, "image_encoder", str(tmp_path / "vit"))
    assert report.layout == "vit" and not report.unused and not report.notes
    assert report.unfilled == ["flava.image_encoder.mask_token"]  # ViT has no mask token
    assert len(report.filled) == 56  # 4 layers x 12 + embeddings, final norm, pooler
    x = pixels()
    with torch.no_grad():
        ref = vit(pixel_values=x, output_hidden_states=True)
        ours = model.flava.image_encoder(x, output_hidden_states=True)
    assert len(ref.hidden_states) == len(ours.hidden_states) == 5
    for a, b in zip(ref.hidden_states, ours.hidden_states, strict=True):
        close(b, a)  # before each layer and the last layer's output (before the final norm)
    close(ours.last_hidden_state, ref.last_hidden_state)  # after the final LayerNorm
    close(model.flava.image_encoder.pooler(ours.last_hidden_state), ref.pooler_output)


def timm_vit() -> torch.nn.Module:
    """timm's VisionTransformer at the tiny preset's image shape, with its epsilon."""
    timm = pytest.importorskip("timm")
    image = TINY.image
    return timm.models.vision_transformer.VisionTransformer(
        img_size=image.image_size,
        patch_size=image.patch_size,
        embed_dim=image.hidden_size,
        depth=image.num_hidden_layers,
        num_heads=image.num_attention_heads,
        mlp_ratio=image.intermediate_size / image.hidden_size,
        num_classes=0,  # as timm's vit_base_patch16_224.dino
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=image.layer_norm_eps),
    )


@pytest.mark.parametrize(("file", "prefix"), [("model.safetensors", ""), ("x.pth", "backbone.")])
def test_timm_hidden_states_match(tmp_path, file, prefix):
    from safetensors.torch import save_file

    vit = randomise(timm_vit())
    state = {prefix + k: v for k, v in vit.state_dict().items()}  # DINO's own: "backbone."
    (tmp_path / "timm").mkdir()
    if file.endswith(".safetensors"):
        save_file(state, str(tmp_path / "timm" / file))
    else:
        torch.save(state, tmp_path / "timm" / file)
    model = tiny_model()
    source = tmp_path / "timm" / (file if prefix else "")
    report = init_from(model, "image_encoder", str(source))
    assert report.layout == "timm" and not report.unused
    assert set(report.unfilled) == {
        "flava.image_encoder.mask_token",
        "flava.image_encoder.pooler.dense.weight",
        "flava.image_encoder.pooler.dense.bias",
    }
    assert report.notes == [
        "layer_norm_eps 1e-06 in the checkpoint, kept the model's 1e-12",
        "the checkpoint does not say its attention heads; assumed the model's 4 (give "
        "num_heads: N in the entry to have it checked)",
    ]
    x = pixels()
    with torch.no_grad():
        ref = vit.forward_features(x)  # [B, 1 + N, D] after the final norm
        ours = model.flava.image_encoder(x)
    close(ours.last_hidden_state, ref)


def test_another_source_epsilon_is_noted_and_kept(tmp_path):
    vit = vit_model(eps=1e-6)  # DINO's own training epsilon
    vit.save_pretrained(tmp_path / "vit")
    model = tiny_model()
    report = init_from(model, "image_encoder", str(tmp_path / "vit"))
    assert report.notes == ["layer_norm_eps 1e-06 in the checkpoint, kept the model's 1e-12"]
    norms = [m for m in model.flava.image_encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert {m.eps for m in norms} == {1e-12}
    x = pixels()
    with torch.no_grad():
        ref = vit(pixel_values=x).last_hidden_state
        ours = model.flava.image_encoder(x).last_hidden_state
    # the class token's row enters the first layer with a variance of ~0.02 (patch rows ~8), so
    # the epsilon moves its normalised values by ~1e-6 / 0.04; attention carries some to patches
    difference = (ours - ref).abs()
    assert 1e-5 < difference.max() < 2e-4


def test_the_start_up_table_names_filled_unfilled_and_unused(tmp_path, caplog):
    vit = vit_model()
    vit.save_pretrained(tmp_path / "vit")
    save_pretrained(FlavaForPreTraining(TINY, codebook=None), tmp_path / "run" / "model")
    entries = (
        f"[{{part: image_encoder, path: {tmp_path / 'vit'}}}, "
        f"{{part: text_encoder, path: {tmp_path / 'run'}}}]"
    )
    argv = ["model.preset=tiny", "model.mim_target=kmeans", f"model.init_from={entries}"]
    cfg = load_config(argv, RunConfig, validate)
    with caplog.at_level(logging.INFO, logger="flava.training.factory"):
        build_pretraining_model(cfg.model)
    table = caplog.text
    assert "model.init_from:" in table
    assert "part           layout  filled  unfilled  unused  source" in table
    rows = [
        line.split() for line in table.splitlines() if line.strip().startswith(("image_", "text_"))
    ]
    assert rows[0][:5] == ["image_encoder", "vit", "56", "1", "0"]
    assert rows[1][:5] == ["text_encoder", "flava", "57", "0", "123"]
    assert "unfilled: flava.image_encoder.mask_token" in table
    assert "unused: flava.image_encoder.* x57" in table  # the run's other parts, by module


def test_fold_keys():
    keys = [f"encoder.layers.{i}.norm1.{k}" for i in range(3) for k in ("weight", "bias")]
    assert fold_keys(keys) == "encoder.layers.*.norm1.{weight,bias} x3"


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_wrong_width_and_depth_refused_in_one_line(tmp_path):
    vit_model(hidden=64).save_pretrained(tmp_path / "narrow")
    vit_model(layers=2).save_pretrained(tmp_path / "shallow")
    with pytest.raises(CheckpointError) as info:
        init_from(tiny_model(), "image_encoder", str(tmp_path / "narrow"))
    message = one_line(info)
    assert "4 layers x 64 wide in the checkpoint but 4 layers x 128 wide in the model" in message
    with pytest.raises(CheckpointError) as info:
        init_from(tiny_model(), "image_encoder", str(tmp_path / "shallow"))
    assert "2 layers x 128 wide in the checkpoint but 4 layers x 128" in one_line(info)


def test_a_bert_text_encoder_is_refused_in_one_line(tmp_path):
    text = TINY.text
    config = transformers.BertConfig(
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        intermediate_size=text.intermediate_size,
        max_position_embeddings=text.max_position_embeddings,
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    model = tiny_model()
    before = model.flava.text_encoder.state_dict()
    with pytest.raises(CheckpointError) as info:
        init_from(model, "text_encoder", str(tmp_path / "bert"))
    message = one_line(info)
    assert "post-LayerNorm BERT" in message and "pre-LayerNorm text_encoder" in message
    after = model.flava.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_positions_of_another_grid_are_resized_bicubically(tmp_path):
    vit = vit_model()  # 64 px: a 4x4 patch grid
    vit.save_pretrained(tmp_path / "vit")
    model = tiny_model(image_size=32)  # 2x2
    report = init_from(model, "image_encoder", str(tmp_path / "vit"))
    assert any("4x4 patch positions resized to 2x2" in n for n in report.notes)
    source = vit.embeddings.position_embeddings.detach()  # [1, 17, D]
    loaded = model.flava.image_encoder.pos_embed.detach()
    assert loaded.shape == (1, 5, TINY.image.hidden_size)
    assert torch.equal(loaded[:, :1], source[:, :1])  # the class token's position kept
    grid = source[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False)
    close(loaded[:, 1:], resized.permute(0, 2, 3, 1).reshape(1, 4, -1))
    at_64 = ImageEncoder(TINY.image)  # what the encoder itself does on 32 px inputs
    with torch.no_grad():
        at_64.pos_embed.copy_(source)
    close(loaded, at_64.positions(2, 2).detach())


def test_a_run_directory_gives_its_text_encoder_bit_for_bit(tmp_path):
    stage = randomise(FlavaForPreTraining(TINY, codebook=None), seed=3)
    save_pretrained(stage, tmp_path / "unimodal_text" / "model")  # as train.py writes it
    model = tiny_model()
    image_before = {k: v.clone() for k, v in model.flava.image_encoder.state_dict().items()}
    report = init_from(model, "text_encoder", str(tmp_path / "unimodal_text"))
    assert report.layout == "flava" and not report.unfilled
    theirs, ours = stage.flava.text_encoder.state_dict(), model.flava.text_encoder.state_dict()
    assert theirs.keys() == ours.keys()
    for key in theirs:
        assert torch.equal(theirs[key], ours[key]), key
    for key, value in model.flava.image_encoder.state_dict().items():
        assert torch.equal(value, image_before[key]), key  # other parts untouched


def test_transformers_flava_parts_and_prefixes(tmp_path):
    source = randomise(FlavaForPreTraining(TINY, codebook=None), seed=4)
    export_transformers(source, tmp_path / "hf")
    model = tiny_model()
    report = init_from(model, "multimodal_encoder", str(tmp_path / "hf"))
    head = init_from(model, "mlm_head", str(tmp_path / "hf"), layout="flava_hf")
    assert report.layout == head.layout == "flava_hf"
    for prefix in ("flava.multimodal_encoder.", "mlm_head."):
        for key, value in source.state_dict().items():
            if key.startswith(prefix):
                assert torch.equal(model.state_dict()[key], value), key


def test_missing_paths_unknown_parts_and_layouts_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_model()
    with pytest.raises(CheckpointError, match="no such file or directory") as info:
        init_from(model, "image_encoder", str(tmp_path / "no" / "such" / "dir"))
    one_line(info)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache") as info:
        init_from(model, "image_encoder", "facebook/dino-vitb16")
    assert "huggingface-cli download facebook/dino-vitb16" in one_line(info)
    with pytest.raises(CheckpointError, match="no parameter of the model starts with") as info:
        init_from(model, "speech_encoder", str(tmp_path))
    one_line(info)
    from safetensors.torch import save_file

    (tmp_path / "odd").mkdir()
    save_file({"weird.thing": torch.zeros(2)}, str(tmp_path / "odd" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="cannot tell its layout") as info:
        init_from(model, "image_encoder", str(tmp_path / "odd"))
    one_line(info)


def test_shipped_configs_with_init_from_validate():
    assert set(InitLayout.values()) == set(LAYOUTS)
    pmd = load_config(["config=pretraining/pmd.yaml"], RunConfig, validate)
    entries = [dataclasses.asdict(e) for e in pmd.model.init_from]
    assert [(e["part"], e["path"]) for e in entries] == [
        ("image_encoder", "facebook/dino-vitb16"),
        ("text_encoder", "runs/unimodal_text/model"),
    ]
    image = load_config(["config=pretraining/unimodal_image.yaml"], RunConfig, validate)
    assert image.model.init_from[0].path == "facebook/dino-vitb16"
    text = load_config(["config=pretraining/unimodal_text.yaml"], RunConfig, validate)
    assert list(text.datasets.selected) == ["text"] and text.datasets.text_max_length == 512
    assert format_init_reports([]).startswith("model.init_from:")


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("{part: speech, path: x}", "model.init_from[0].part='speech' is invalid"),
        ("{part: image_encoder}", "model.init_from[0].path='' is invalid"),
        ("{part: image_encoder, path: x, layout: onnx}", "must be one of vit, timm, flava_hf"),
    ],
)
def test_bad_entries_fail_validation_in_one_line(entry, needle):
    with pytest.raises(ConfigError) as info:
        load_config([f"model.init_from=[{entry}]"], RunConfig, validate)
    assert needle in one_line(info)


@pytest.mark.slow
def test_a_training_run_starts_from_the_loaded_encoder(tmp_path, monkeypatch, caplog):
    import flava.training.factory as factory
    from flava.train import main

    vit = vit_model()
    vit.save_pretrained(tmp_path / "vit")
    x = pixels()
    with torch.no_grad():
        expected = vit(pixel_values=x).last_hidden_state
    seen = []
    build = factory.build_pretraining_model

    def spy(mcfg, *args):
        model, kmeans = build(mcfg, *args)
        with torch.no_grad():
            seen.append(model.flava.image_encoder.eval()(x).last_hidden_state)
        model.flava.image_encoder.train()
        return model, kmeans

    monkeypatch.setattr(factory, "build_pretraining_model", spy)
    argv = [
        *SMALL,
        f"training.run_dir={tmp_path / 'run'}",
        "training.lightning.max_steps=1",
        "training.evaluation.enabled=false",
        f"model.init_from=[{{part: image_encoder, path: {tmp_path / 'vit'}}}]",
    ]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    close(seen[0], expected)
    assert "image_encoder  vit         56         1       0" in caplog.text


def test_timm_head_count_from_its_name_or_the_entry(tmp_path):
    """timm's config.json without model_args: the head count comes from the architecture name
    (vit_small: 6) or the entry's num_heads, and another count than the model's is refused."""
    from safetensors.torch import save_file

    vit = timm_vit()
    save_file(vit.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"architecture": "vit_small_patch16_224.dino"}')
    with pytest.raises(CheckpointError, match="6 attention heads in the checkpoint but 4"):
        init_from(tiny_model(), "image_encoder", str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="8 attention heads in the checkpoint but 4"):
        init_from(tiny_model(), "image_encoder", str(tmp_path), num_heads=8)
    report = init_from(tiny_model(), "image_encoder", str(tmp_path), num_heads=4)
    assert not any("attention heads" in note for note in report.notes)


def _kmeans_run(folder, codes: int = 16, with_codebook: bool = True):
    """A k-means run's model/ directory: tiny heads for `codes` image tokens (+ its codebook)."""
    from flava.checkpoints.io import save_kmeans
    from flava.objectives.targets import KMeansCodebook

    config = dataclasses.replace(TINY, image=dataclasses.replace(TINY.image, vocab_size=codes))
    save_pretrained(randomise(FlavaForPreTraining(config, codebook=None)), folder / "model")
    kmeans = KMeansCodebook(codes, TINY.image.patch_size)
    kmeans.fit(torch.rand(8, 3, 32, 32), seed=0)
    if with_codebook:
        save_kmeans(folder / "model", kmeans.state_dict())
    return kmeans


def test_rebuilt_image_heads_are_initialised_like_the_model(tmp_path):
    """A pretrained model's image heads rebuilt for another k-means size are initialised as the
    model is: N(0, initializer_range), zero biases, unit norms (not PyTorch's defaults)."""
    _kmeans_run(tmp_path, codes=32, with_codebook=False)
    argv = [f"model.pretrained_model_key={tmp_path / 'model'}", "model.kmeans_codes=16"]
    model, kmeans = build_pretraining_model(load_config(argv, RunConfig, validate).model)
    assert kmeans is not None and not bool(kmeans.fitted)
    for head in (model.mim_head, model.mmm_image_head):
        assert head.decoder.weight.shape[0] == 16 and not head.decoder.bias.any()
        assert not head.dense.bias.any() and bool((head.norm.weight == 1).all())
        std = float(head.decoder.weight.detach().std()) / model.config.initializer_range
        assert 0.9 < std < 1.1


def test_an_initialised_image_head_brings_its_kmeans_codebook(tmp_path):
    """model.init_from of mim_head from a k-means run loads that run's codebook (its target ids
    mean its centroids); a run without one is refused in one line."""
    trained = _kmeans_run(tmp_path / "kmeans_run")
    _kmeans_run(tmp_path / "bare_run", with_codebook=False)
    base = ["model.preset=tiny", "model.mim_target=kmeans", "model.kmeans_codes=16"]
    entry = f"model.init_from=[{{part: mim_head, path: {tmp_path / 'kmeans_run'}}}]"
    model, kmeans = build_pretraining_model(load_config([*base, entry], RunConfig, validate).model)
    assert bool(kmeans.fitted)
    torch.testing.assert_close(kmeans.centroids, trained.centroids, rtol=0, atol=0)
    bare = f"model.init_from=[{{part: mmm_image_head, path: {tmp_path / 'bare_run'}}}]"
    with pytest.raises(ConfigError) as info:
        build_pretraining_model(load_config([*base, bare], RunConfig, validate).model)
    assert "no kmeans_codebook.safetensors beside its weights" in one_line(info)
