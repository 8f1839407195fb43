"""A fine-tuned classifier's model/ directory: round trip, one-line refusals, the image size a
backbone's config.json records."""

from __future__ import annotations

import json

import pytest
import torch

from flava.checkpoints import (
    CheckpointError,
    export_transformers,
    load_finetuned,
    save_finetuned,
    save_pretrained,
)
from flava.checkpoints.finetuned import checkpoint_image_size
from flava.model import FlavaModel, preset
from flava.model.classifier import FlavaClassifier


@pytest.fixture
def saved(tmp_path):
    model = FlavaClassifier(FlavaModel(preset("tiny")), "text", 3, hidden_size=16).eval()
    save_finetuned(model, tmp_path / "model", {"task": "t", "class_names": ["a", "b", "c"]})
    return model, tmp_path / "model"


def test_round_trip(saved):
    model, directory = saved
    loaded, info = load_finetuned(directory)
    assert info["class_names"] == ["a", "b", "c"] and info["num_outputs"] == 3
    ids = torch.tensor([[101, 7, 8, 102]])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        got = loaded.eval()(input_ids=ids, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: (d / "task.json").unlink(), "task.json: no such file"),
        (lambda d: (d / "task.json").write_text("{"), "task.json: not valid JSON"),
        (lambda d: (d / "task.json").write_text("{}"), "task.json: lacks modality"),
        (lambda d: (d / "head.safetensors").unlink(), "head.safetensors: no such file"),
        (lambda d: (d / "head.safetensors").write_bytes(b"x"), "not a valid safetensors"),
        (
            lambda d: (d / "task.json").write_text(
                json.dumps({**json.loads((d / "task.json").read_text()), "num_outputs": 5})
            ),
            "does not fit the head task.json describes",
        ),
    ],
)
def test_missing_or_damaged_files_are_refused_in_one_line(saved, damage, needle):
    _, directory = saved
    damage(directory)
    with pytest.raises(CheckpointError, match=needle) as exc:
        load_finetuned(directory)
    assert "\n" not in str(exc.value)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        load_finetuned(tmp_path / "nope")


def test_checkpoint_image_size_in_both_layouts(tmp_path):
    model = FlavaModel(preset("tiny"))
    save_pretrained(model, tmp_path / "ours")
    export_transformers(model, tmp_path / "hf")
    size = preset("tiny").image.image_size
    assert checkpoint_image_size(tmp_path / "ours") == size
    assert checkpoint_image_size(tmp_path / "hf") == size
    assert checkpoint_image_size(tmp_path / "none") is None
    assert checkpoint_image_size("facebook/flava-full") is None  # a key, not a local folder
