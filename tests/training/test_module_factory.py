"""The pretraining model's factory: the final config first, one build, k-means fitted apart."""

import logging
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from flava.checkpoints.io import CheckpointError
from flava.config import ConfigError, PretrainingModelConfig
from flava.config.loader import from_fields
from flava.objectives.pretraining import LossWeights
from flava.training.factory import (
    build_pretraining_model,
    check_codebook,
    fit_kmeans,
    mim_target_kind,
)


def _model_cfg(**overrides):
    base = {
        "preset": "tiny",
        "pretrained_model_key": None,
        "activation_checkpointing": False,
        "mim_target": "auto",
        "codebook": None,
        "kmeans_codes": 12,
        "kmeans_images": 4,
    }
    return from_fields(PretrainingModelConfig, {**base, **overrides})


@pytest.mark.slow
def test_factory_imports_without_lightning():
    code = "import sys, flava.training.factory; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_kmeans_preset_is_built_with_the_kmeans_vocabulary():
    cfg = _model_cfg(activation_checkpointing=True)
    assert mim_target_kind(cfg) == "kmeans"
    model, kmeans = build_pretraining_model(cfg)
    assert model.codebook is None and kmeans is not None and kmeans.num_codes == 12
    assert model.config.image.vocab_size == 12
    assert model.mim_head.decoder.out_features == 12  # built once, at the right size
    assert model.mmm_image_head.decoder.out_features == 12


def test_dalle_preset_needs_codebook_weights():
    with pytest.raises(ValueError, match="needs codebook weights"):
        build_pretraining_model(_model_cfg(mim_target="dalle"))


def test_the_dalle_key_reads_encoder_pkl_where_the_original_release_keeps_it(
    openai_encoder, tmp_path, monkeypatch
):
    """model.codebook=dalle (the paper configs'): OpenAI's encoder.pkl in torch.hub's folder;
    absent, one line says where to put it and how to choose k-means instead."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = _model_cfg(mim_target="dalle", codebook="dalle")
    with pytest.raises(CheckpointError) as info:
        check_codebook(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert f"no encoder.pkl at {tmp_path / 'torch' / 'hub' / 'checkpoints'}" in message
    assert "put https://cdn.openai.com/dall-e/encoder.pkl there" in message
    assert "model.mim_target=kmeans" in message
    with pytest.raises(CheckpointError, match="model.codebook=nowhere.pkl: no such file"):
        check_codebook(_model_cfg(mim_target="dalle", codebook="nowhere.pkl"))
    check_codebook(_model_cfg(codebook=None))  # k-means targets need none
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "encoder.pkl").write_bytes(openai_encoder[0].read_bytes())
    check_codebook(cfg)
    model, kmeans = build_pretraining_model(cfg)
    assert kmeans is None and model.codebook is not None
    assert model.config.image.vocab_size == 64 == model.mim_head.decoder.out_features


def test_fit_kmeans_logs_and_refuses_too_few_patches(caplog):
    _, kmeans = build_pretraining_model(_model_cfg())
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="flava"):
        fit_kmeans(kmeans, images, seed=0, requested=4)
    assert bool(kmeans.fitted)
    assert "fitted a 12-code k-means MIM codebook on 2 images" in caplog.text
    _, big = build_pretraining_model(_model_cfg(kmeans_codes=5000))
    with pytest.raises(ConfigError, match=r"model.kmeans_codes=5000: .*model.kmeans_images=4, 2"):
        fit_kmeans(big, images, seed=0, requested=4)


def test_loss_weights_from_config():
    losses = OmegaConf.create(
        {
            "mim_weight": 1.0,
            "mlm_weight": 2.0,
            "mmm_image_weight": 3.0,
            "mmm_text_weight": 4.0,
            "itm_weight": 5.0,
            "global_contrastive_weight": 6.0,
        }
    )
    assert LossWeights.from_config(losses) == LossWeights(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
