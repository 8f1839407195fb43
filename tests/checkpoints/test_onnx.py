"""ONNX export (`flava.convert --to onnx`): onnxruntime's embeddings against PyTorch's at tiny
shapes, dynamic batch and text length, from a pretraining checkpoint, and the one-line errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from flava.checkpoints import CheckpointError, from_pretrained, save_pretrained
from flava.checkpoints.onnx import OnnxEncoders
from flava.convert import main as convert
from flava.model import FlavaForPreTraining, FlavaModel, preset
from flava.model.codebook import ImageCodebook


def _texts(batch: int, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask whose rows are padded after lengths 2 .. length."""
    lengths = torch.linspace(2, length, batch).long()
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(1, vocab, (batch, length)) * mask
    return ids, mask


def _assert_same(encoders: OnnxEncoders, model: FlavaModel) -> None:
    """onnxruntime = PyTorch to 1e-4 at several batch sizes and text lengths."""
    config = model.config
    size, vocab = config.image.image_size, config.text.vocab_size
    for batch, length in [(1, 5), (3, 20), (7, config.text.max_position_embeddings)]:
        pixels = torch.randn(batch, 3, size, size)
        ids, mask = _texts(batch, length, vocab)
        with torch.no_grad():
            image, text = model.encode_image(pixels), model.encode_text(ids, mask)
        got_image = encoders.encode_image(pixels.numpy())
        got_text = encoders.encode_text(ids.numpy(), mask.numpy())
        assert got_image.shape == (batch, config.projection_dim) == got_text.shape
        np.testing.assert_allclose(got_image, image.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_text, text.numpy(), atol=1e-4, rtol=0)


def test_export_equals_pytorch_with_dynamic_batch_and_length(tmp_path, capsys):
    model = FlavaModel(preset("tiny")).eval()
    save_pretrained(model, tmp_path / "model")
    assert convert([str(tmp_path / "model"), str(tmp_path / "onnx"), "--to", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime vs PyTorch" in out and "(onnx)" in out
    meta = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert meta["image_size"] == 64 and meta["projection_dim"] == 128
    assert meta["max_length"] == 128 and meta["pad_token_id"] == 0
    encoders = OnnxEncoders(tmp_path / "onnx", threads=1)
    _assert_same(encoders, from_pretrained(FlavaModel, tmp_path / "model").eval())
    # the padded positions do not count: the same text padded further embeds the same
    ids, mask = _texts(2, 6, 1000)
    longer = encoders.encode_text(
        np.pad(ids.numpy(), ((0, 0), (0, 9))), np.pad(mask, ((0, 0), (0, 9)))
    )
    np.testing.assert_allclose(longer, encoders.encode_text(ids.numpy(), mask.numpy()), atol=1e-5)
    assert encoders.encode_image(np.zeros((0, 3, 64, 64))).shape == (0, 128)


def test_export_from_a_pretraining_checkpoint(tmp_path, capsys):
    model = FlavaForPreTraining(preset("tiny")).eval()
    checkpoint = {  # what a pretraining run's checkpoint holds for flava.convert
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "flava_model_config": model.config.to_dict(),
        "global_step": 1,
    }
    path = tmp_path / "epoch=0-step=1.ckpt"
    torch.save(checkpoint, path)
    assert convert([str(path), str(tmp_path / "onnx"), "--to", "onnx"]) == 0
    assert "(training) to" in capsys.readouterr().out
    _assert_same(OnnxEncoders(tmp_path / "onnx", threads=1), model.flava)


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    model = FlavaModel(preset("tiny"))
    save_pretrained(model, tmp_path / "model")
    save_pretrained(ImageCodebook(preset("tiny").codebook), tmp_path / "codebook")
    assert convert([str(tmp_path / "model"), str(tmp_path / "onnx"), "--to", "onnx"]) == 0
    encoders = OnnxEncoders(tmp_path / "onnx")
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 64, 64\]"):
        encoders.encode_image(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        encoders.encode_text(np.ones((1, 129), np.int64))
    capsys.readouterr()
    cases = [
        (tmp_path / "codebook", "takes a FLAVA model"),  # an image codebook has no encoders
        (tmp_path / "onnx", "is an ONNX export"),  # an export is no source
    ]
    for src, needle in cases:
        assert convert([str(src), str(tmp_path / "out"), "--to", "onnx"]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    assert convert([str(tmp_path / "model"), str(tmp_path / "out"), "--to", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "pip install 'flava[onnx]'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="pip install"):
        OnnxEncoders(tmp_path / "onnx")
