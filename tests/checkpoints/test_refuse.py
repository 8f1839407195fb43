"""Checkpoints and weight files that need more than tensors and plain containers are refused in
one line (exit status 2) wherever a user can point at one; nothing in them runs."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

from flava import finetune, train
from flava.checkpoints import CheckpointError, from_pretrained, save_pretrained
from flava.checkpoints.io import read_checkpoint
from flava.model import FlavaModel, preset

TRAIN = [
    "config=pretraining/demo.yaml",
    "training.lightning.accelerator=cpu",
    "training.num_workers=0",
    "training.evaluation.enabled=false",
]
FINETUNE = [
    "config=finetuning/embedded_image.yaml",
    "training.lightning.accelerator=cpu",
    "training.num_workers=0",
    "data.train.size=8",
    "data.val=[{name: val, size: 4}]",
]
KEY = "training.lightning_load_from_checkpoint"


class SystemCall:
    """Pickles as os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.fixture
def evil_ckpt(tmp_path: Path, marker: Path) -> Path:
    """A Lightning-looking checkpoint whose unpickling would run `touch marker`."""
    path = tmp_path / "evil.ckpt"
    state = {"w": torch.zeros(2)}
    torch.save({"state_dict": state, "global_step": 1, "x": SystemCall(f"touch {marker}")}, path)
    return path


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


@pytest.mark.parametrize(("main", "argv"), [(train.main, TRAIN), (finetune.main, FINETUNE)])
def test_resume_from_a_malicious_checkpoint_is_refused(
    main, argv, evil_ckpt, marker, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    assert main([*argv, f"training.run_dir={run_dir}", f"{KEY}={evil_ckpt}"]) == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"error: {KEY}={evil_ckpt}: refused to unpickle")
    assert "posix.system" in err or "nt.system" in err
    assert not marker.exists()
    assert not run_dir.exists()  # refused before any work


@pytest.mark.parametrize(("main", "argv"), [(train.main, TRAIN), (finetune.main, FINETUNE)])
def test_resume_from_files_that_are_not_checkpoints(main, argv, tmp_path, capsys):
    tensors = tmp_path / "tensors.pt"
    torch.save({"w": torch.zeros(3)}, tensors)
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:900])
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    cases = [
        (tensors, "not a Lightning checkpoint"),
        (truncated, "incomplete zip"),
        (tmp_path / "text.ckpt", "not a PyTorch file"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing.ckpt", "no such file"),
    ]
    for path, needle in cases:
        assert main([*argv, f"training.run_dir={tmp_path / 'run'}", f"{KEY}={path}"]) == 2
        err = _one_error_line(capsys)
        assert err.startswith(f"error: {KEY}={path}: ") and needle in err, err


def test_read_checkpoint_refuses_and_accepts(evil_ckpt, marker, tmp_path):
    with pytest.raises(CheckpointError, match="refused to unpickle") as info:
        read_checkpoint(evil_ckpt)  # fine-tuning's best-checkpoint reload
    assert str(info.value).startswith(str(evil_ckpt)) and "\n" not in str(info.value)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3, "loops": {"a": [1]}}, plain)
    assert read_checkpoint(plain)["global_step"] == 3
    legacy = tmp_path / "legacy.ckpt"
    torch.save(
        {"state_dict": {}, "x": SystemCall(f"touch {marker}")},
        legacy,
        _use_new_zipfile_serialization=False,
    )
    assert not zipfile.is_zipfile(legacy)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        read_checkpoint(legacy)
    assert not marker.exists()


@pytest.fixture
def evil_weights(tmp_path: Path, marker: Path) -> Path:
    """A transformers-style directory whose pytorch_model.bin would run `touch marker`."""
    ours = tmp_path / "ours"
    save_pretrained(FlavaModel(preset("tiny")), ours)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((ours / "config.json").read_text())
    torch.save({"weights": SystemCall(f"touch {marker}")}, evil / "pytorch_model.bin")
    return evil


def test_from_pretrained_refuses_a_malicious_pytorch_model_bin(evil_weights, marker):
    with pytest.raises(CheckpointError) as info:
        from_pretrained(FlavaModel, evil_weights)
    message = str(info.value)
    assert message.startswith(f"{evil_weights / 'pytorch_model.bin'}: refused to unpickle")
    assert "\n" not in message and not marker.exists()


def test_finetune_from_malicious_weights_exits_2(evil_weights, marker, tmp_path, capsys):
    argv = [*FINETUNE, f"training.run_dir={tmp_path / 'run'}"]
    assert finetune.main([*argv, f"model.pretrained_model_key={evil_weights}"]) == 2
    err = _one_error_line(capsys)
    assert "pytorch_model.bin: refused to unpickle" in err and not marker.exists()


def test_train_with_a_malicious_codebook_exits_2(marker, tmp_path, capsys):
    pkl = tmp_path / "encoder.pkl"
    torch.save({"blocks.input.w": torch.zeros(1), "x": SystemCall(f"touch {marker}")}, pkl)
    argv = [*TRAIN, f"training.run_dir={tmp_path / 'run'}", f"model.codebook={pkl}"]
    assert train.main([*argv, "model.mim_target=dalle"]) == 2
    err = _one_error_line(capsys)
    assert f"{pkl}: refused to load global" in err and not marker.exists()
