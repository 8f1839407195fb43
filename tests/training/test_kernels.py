"""training.attention_kernel: measured in half precision, fixed in fp32, kept by a resume."""

from __future__ import annotations

import types

import pytest
import torch

from flava.model import attention
from flava.training.kernels import AttentionKernel

CPU = torch.device("cpu")
SHAPE = (2, 5, 8)
TRAINER = types.SimpleNamespace(strategy=types.SimpleNamespace(broadcast=lambda x: x))


@pytest.fixture(autouse=True)
def _unmeasured_kernels():
    attention._chosen.clear()
    yield
    attention._chosen.clear()


def _timed(monkeypatch, sdpa: float, explicit: float) -> list[int]:
    calls: list[int] = []

    def choose(device, dtype, *shape):
        calls.append(1)
        return {"sdpa": sdpa, "explicit": explicit}

    monkeypatch.setattr(attention, "choose", choose)
    return calls


def test_half_precision_is_measured_and_kept_by_a_resume(monkeypatch):
    calls = _timed(monkeypatch, sdpa=0.1, explicit=0.5)
    first = AttentionKernel()
    how = first._choose(TRAINER, CPU, torch.bfloat16, SHAPE, "cpu/bfloat16")
    assert first.chosen == {"cpu/bfloat16": "sdpa"} and how.startswith("measured")
    resumed = AttentionKernel()
    resumed.load_state_dict(first.state_dict())
    _timed(monkeypatch, sdpa=0.5, explicit=0.1)  # the resumed run's machine differs
    assert resumed._choose(TRAINER, CPU, torch.bfloat16, SHAPE, "cpu/bfloat16") == (
        "as the checkpoint's run chose"
    )
    assert resumed.chosen["cpu/bfloat16"] == "sdpa" and len(calls) == 1


def test_within_ten_percent_the_default_stays(monkeypatch):
    _timed(monkeypatch, sdpa=0.095, explicit=0.1)  # cpu bf16 default: explicit
    kernel = AttentionKernel()
    kernel._choose(TRAINER, CPU, torch.bfloat16, SHAPE, "cpu/bfloat16")
    assert kernel.chosen["cpu/bfloat16"] == "explicit"


@pytest.mark.parametrize(
    ("dtype", "setting", "deterministic", "chosen"),
    [
        (torch.float32, "auto", False, "sdpa"),
        (torch.bfloat16, "auto", True, "explicit"),
        (torch.float32, "explicit", False, "explicit"),
    ],
)
def test_fp32_deterministic_and_fixed_settings_are_not_measured(
    monkeypatch, dtype, setting, deterministic, chosen
):
    calls = _timed(monkeypatch, sdpa=0.1, explicit=0.1)
    kernel = AttentionKernel(setting, deterministic)
    kernel._choose(TRAINER, CPU, dtype, SHAPE, "cpu/x")
    assert kernel.chosen["cpu/x"] == chosen and not calls
