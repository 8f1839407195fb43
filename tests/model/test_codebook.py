"""Image codebook: parity with transformers, safe loading of OpenAI's encoder.pkl, freezing."""

from __future__ import annotations

import builtins
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from flava.checkpoints.dalle import (
    codebook_config_from_transformers,
    codebook_config_to_transformers,
    codebook_state_from_transformers,
    codebook_state_to_transformers,
    load_openai_encoder,
)
from flava.model.codebook import ImageCodebook
from flava.model.config import CodebookConfig


def _randomise(module: torch.nn.Module) -> None:
    """Weights ~ N(0, 1/fan_in) and non-zero biases, so logits are far from ties."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.normal_(std=p[0].numel() ** -0.5)
            else:
                p.normal_(std=0.1)


def _images(batch: int, size: int) -> torch.Tensor:
    """Smooth-ish images in [0, 1]."""
    x = torch.rand(batch, 3, size // 4, size // 4)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")


# ---------------------------------------------------------------------------------------------
# transformers parity


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hidden", "blocks", "vocab", "size"), [(16, 1, 64, 32), (16, 2, 128, 48), (32, 2, 64, 40)]
)
def test_parity_with_transformers(hidden: int, blocks: int, vocab: int, size: int) -> None:
    tf = pytest.importorskip("transformers")
    hf_config = tf.FlavaImageCodebookConfig(
        hidden_size=hidden, num_blocks_per_group=blocks, vocab_size=vocab
    )
    hf = tf.FlavaImageCodebook(hf_config).eval()
    _randomise(hf)

    config = codebook_config_from_transformers(hf_config.to_dict())
    assert config == CodebookConfig(vocab, hidden, 4, blocks, 3)
    ours = ImageCodebook(config)
    hf_state = hf.state_dict()
    prefixed = {f"image_codebook.{k}": v for k, v in hf_state.items()}
    mapped, unplaced = codebook_state_from_transformers({**prefixed, "flava.logit_scale": 1})
    assert unplaced == ["flava.logit_scale"]
    assert codebook_state_from_transformers(hf_state)[0].keys() == mapped.keys()
    assert ours.load_state_dict(mapped, strict=True)
    assert "blocks.group_1.block_1.res_path.conv_1.weight" in mapped

    pixels = _images(3, size)
    mapped_pixels = ImageCodebook.map_pixels(pixels)
    with torch.no_grad():
        ref = hf(mapped_pixels)
        got = ours(mapped_pixels)
    assert got.shape == (3, vocab, size // 8, size // 8)
    assert (got - ref).abs().max().item() <= 1e-5
    ref_ids = hf.get_codebook_indices(mapped_pixels).flatten(1)
    assert torch.equal(ours.get_codebook_indices(pixels), ref_ids)
    assert ref_ids.unique().numel() > 1
    probs = ours.get_codebook_probs(pixels)
    assert torch.allclose(probs, hf.get_codebook_probs(mapped_pixels), atol=1e-6)

    # round trip: ours -> transformers
    back_config = tf.FlavaImageCodebookConfig(**codebook_config_to_transformers(config))
    assert back_config.model_type == "flava_image_codebook"
    hf2 = tf.FlavaImageCodebook(back_config).eval()
    result = hf2.load_state_dict(codebook_state_to_transformers(ours.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        assert torch.equal(hf2(mapped_pixels), ref)


def test_state_to_transformers_rejects_foreign_keys() -> None:
    with pytest.raises(ValueError, match="not image-codebook keys"):
        codebook_state_to_transformers({"flava.logit_scale": torch.zeros(())})


# ---------------------------------------------------------------------------------------------
# OpenAI encoder.pkl


def test_load_openai_encoder(openai_encoder: tuple) -> None:
    path, state, pixels, logits = openai_encoder
    config, ours = load_openai_encoder(path)
    assert "dall_e" not in sys.modules
    assert config == CodebookConfig(vocab_size=64, hidden_size=16, num_blocks_per_group=2)
    assert len(ours) == len(state)
    for key, value in state.items():
        new = key[:-2] + (".weight" if key.endswith(".w") else ".bias")
        assert torch.equal(ours[new], value), key
    model = ImageCodebook(config)
    model.load_state_dict(ours, strict=True)
    with torch.no_grad():
        assert torch.allclose(model(pixels), logits, atol=1e-5, rtol=0)


def test_load_state_dict_files(openai_encoder: tuple, tmp_path: Path) -> None:
    path, state, pixels, logits = openai_encoder
    _, ours = load_openai_encoder(path)
    for name, sd in [
        ("openai.pt", state),
        ("ours.pt", ours),
        (
            "hf.pt",
            {f"image_codebook.{k}": v for k, v in codebook_state_to_transformers(ours).items()},
        ),
    ]:
        torch.save(sd, tmp_path / name)
        config, loaded = load_openai_encoder(tmp_path / name)
        assert config.hidden_size == 16 and loaded.keys() == ours.keys()
        assert all(torch.equal(loaded[k], ours[k]) for k in ours)

    bad = dict(ours)
    bad["blocks.group_2.block_1.res_path.conv_2.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: .*conv_2\.weight has shape") as err:
        load_openai_encoder(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)
    del bad["blocks.group_2.block_1.res_path.conv_2.weight"]
    torch.save(bad, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing\.pt: missing 1 codebook weights"):
        load_openai_encoder(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="no such file"):
        load_openai_encoder(tmp_path / "nope.pkl")


class _SystemCall:
    """Pickles as os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class _Exec:
    """Pickles as builtins.exec(source)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple:
        return (builtins.exec, (self.source,))


@pytest.mark.parametrize("kind", ["system", "exec"])
@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
def test_malicious_pickle_is_refused(tmp_path: Path, kind: str, container: str) -> None:
    marker = tmp_path / "pwned"
    if kind == "system":
        payload: object = _SystemCall(f"touch {marker}")
    else:
        payload = _Exec(f"open({str(marker)!r}, 'w').write('x')")
    path = tmp_path / "encoder.pkl"
    if container == "torch_zip":
        torch.save({"blocks.input.w": torch.zeros(1), "evil": payload}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"evil": payload}, f, protocol=2)
    with pytest.raises(ValueError) as err:
        load_openai_encoder(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused to load global ")
    assert ("system" if kind == "system" else "builtins.exec") in message
    assert "\n" not in message
    assert not marker.exists()


def test_dall_e_globals_are_never_called(tmp_path: Path) -> None:
    """A dall_e.* callable REDUCEd with arguments becomes an inert placeholder."""
    marker = tmp_path / "pwned"
    fake = types.ModuleType("dall_e")

    class _Call:
        def __reduce__(self) -> tuple:
            return (_run, (f"touch {marker}",))

    def _run(command: str) -> int:
        return os.system(command)

    _run.__module__, _run.__qualname__ = "dall_e", "run"
    fake.run = _run  # type: ignore[attr-defined]
    sys.modules["dall_e"] = fake
    try:
        torch.save(_Call(), tmp_path / "odd.pkl")
    finally:
        del sys.modules["dall_e"]
    with pytest.raises(ValueError, match=r"odd\.pkl: holds a Placeholder, not a DALL-E encoder"):
        load_openai_encoder(tmp_path / "odd.pkl")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# default codebook


@pytest.mark.slow
def test_default_codebook_indices_frozen_and_eval() -> None:
    model = ImageCodebook(CodebookConfig())
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    with torch.no_grad():
        ids = model.get_codebook_indices(_images(2, 112))
    assert ids.shape == (2, 196) and ids.dtype == torch.long
    assert 0 <= ids.min() and ids.max() < 8192
    assert ids.unique().numel() > 1
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model(torch.zeros(3, 16, 16))
