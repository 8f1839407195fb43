"""Presets, parameter counts, pretrained keys offline, the convert command, bad files."""

from __future__ import annotations

import time

import pytest
import torch

from flava.checkpoints import CheckpointError, from_pretrained, save_pretrained
from flava.convert import main as convert_main
from flava.model import PRESET_NAMES, FlavaForPreTraining, FlavaModel, preset


@pytest.mark.slow
def test_flava_full_parameter_count_and_cpu_forward():
    model = FlavaForPreTraining(preset("flava_full")).eval()
    # transformers' FlavaForPreTraining(FlavaConfig()) counts 357,645,303 (codebook included)
    assert sum(p.numel() for p in model.parameters()) == 357_645_303
    pixels = torch.randn(1, 3, 224, 224)
    ids = torch.tensor([[101, 1037, 4937, 102]])
    with torch.no_grad():
        out = model.flava(pixels, ids, torch.ones_like(ids))
        tokens = model.codebook.get_codebook_indices(torch.rand(1, 3, 112, 112))
    assert out.multimodal.last_hidden_state.shape == (1, 1 + 197 + 4, 768)
    assert model.flava.encode_image(pixels).shape == (1, 768)
    assert tokens.shape == (1, 196) and tokens.max() < 8192


def test_scaling_presets_have_published_widths():
    widths = {"900m": 1024, "1.8b": 1280, "2.7b": 1408, "4.8b": 1664, "10b": 2048}
    layers = {
        "900m": (24, 12),
        "1.8b": (32, 16),
        "2.7b": (40, 20),
        "4.8b": (48, 24),
        "10b": (64, 40),
    }
    for name, width in widths.items():
        c = preset(name)
        assert c.image.hidden_size == c.text.hidden_size == c.multimodal.hidden_size == width
        assert (c.image.num_hidden_layers, c.multimodal.num_hidden_layers) == layers[name]
    assert set(PRESET_NAMES) >= {"flava_full", "tiny", *widths}
    with torch.device("meta"):  # shapes only, nothing allocated
        n = sum(p.numel() for p in FlavaForPreTraining(preset("900m"), codebook=None).parameters())
    assert 0.85e9 < n < 0.95e9
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_pretrained_key_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        from_pretrained(FlavaModel, "flava_full")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert "facebook/flava-full" in message and "huggingface-cli download" in message
    assert "local directory" in message


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        from_pretrained(FlavaModel, tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(FlavaModel, tmp_path / "bad")
    model = FlavaModel(preset("tiny"))
    save_pretrained(model, tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        from_pretrained(FlavaModel, tmp_path / "ok")


def test_malicious_pytorch_bin_is_refused(tmp_path):
    import json
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    d = tmp_path / "evil"
    d.mkdir()
    model = FlavaModel(preset("tiny"))
    save_pretrained(model, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config))
    torch.save({"weights": Evil()}, d / "pytorch_model.bin", pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to unpickle") as info:
        from_pretrained(FlavaModel, d)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_convert_command_both_ways(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    shape = dict(hidden_size=32, num_attention_heads=2, intermediate_size=40)
    cfg = transformers.FlavaConfig(
        image_config=dict(num_hidden_layers=1, image_size=32, patch_size=16, **shape),
        text_config=dict(num_hidden_layers=1, vocab_size=120, **shape),
        multimodal_config=dict(num_hidden_layers=1, **shape),
        image_codebook_config=dict(hidden_size=8, vocab_size=32, num_blocks_per_group=1),
        projection_dim=16,
        hidden_size=32,
    )
    transformers.FlavaForPreTraining(cfg).save_pretrained(tmp_path / "hf")
    assert convert_main([str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    assert "(flava)" in capsys.readouterr().out
    ours = from_pretrained(FlavaForPreTraining, tmp_path / "ours")
    assert ours.codebook is not None
    assert convert_main([str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    back, info = transformers.FlavaForPreTraining.from_pretrained(
        tmp_path / "back", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    capsys.readouterr()
    assert convert_main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error:")
