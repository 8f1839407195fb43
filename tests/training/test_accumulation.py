"""Gradient accumulation: one kind per optimizer step, masked losses normalised over the step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flava.data.batch import PretrainingBatch
from flava.data.mixing import _CHUNK, MixedBatches, Stream
from flava.training import module as module_lib
from flava.training.data import AccumulationWindows

from .test_train import SMALL

STREAMS = {k: Stream(k, [list(range(10))], [1.0]) for k in ("image", "text", "vl")}


def _kinds(accumulation: int, count: int, start: int = 0) -> list[str]:
    mixed = MixedBatches(STREAMS, None, 4, seed=3, accumulation=accumulation)  # type: ignore[arg-type]
    return [mixed.kind_of(b) for b in range(start, start + count)]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_each_window_of_k_batches_has_one_kind(k: int) -> None:
    # across a chunk boundary too: windows of 3 and 5 straddle batch _CHUNK
    start = _CHUNK - 2 * k - (_CHUNK % k)
    kinds = _kinds(k, 6 * k, start)
    assert start % k == 0
    windows = [kinds[i : i + k] for i in range(0, len(kinds), k)]
    assert all(len(set(w)) == 1 for w in windows), windows
    # each window takes the kind drawn for its first batch without accumulation
    plain = _kinds(1, 6 * k, start)
    assert [w[0] for w in windows] == plain[::k]


def test_the_ratios_hold_per_step_and_no_accumulation_is_unchanged() -> None:
    kinds = np.array(_kinds(4, 4000))
    share = {k: float(np.mean(kinds == k)) for k in ("image", "text", "vl")}
    assert all(abs(v - 1 / 3) < 0.05 for v in share.values()), share
    mixed = MixedBatches(STREAMS, None, 4, seed=3)  # type: ignore[arg-type]
    assert _kinds(1, 50) == [mixed.kind_of(b) for b in range(50)]


def test_windows_carry_every_members_masks() -> None:
    batches = [PretrainingBatch("vl", i, {"bool_masked_pos": i, "x": i}) for i in range(5)]
    out = list(AccumulationWindows(batches, 2))
    assert [b.index for b in out] == [0, 1, 2, 3, 4]
    assert [[m["batch_index"] for m in b.window] for b in out] == [
        [0, 1],
        [0, 1],
        [2, 3],
        [2, 3],
        [4],
    ]
    assert out[0].window[0] == {"kind": "vl", "batch_index": 0, "bool_masked_pos": 0}


@pytest.mark.slow
def test_a_run_with_accumulation_normalises_over_each_step(tmp_path, monkeypatch) -> None:
    from flava.train import main

    windows: list[tuple[int, dict[str, int]]] = []
    real = module_lib.window_of

    def spy(members, *args):
        window = real(members, *args)
        windows.append((len(members), dict(window.counts)))
        return window

    monkeypatch.setattr(module_lib, "window_of", spy)
    argv = [
        *SMALL,
        f"training.run_dir={tmp_path / 'run'}",
        "training.lightning.max_steps=3",
        "training.lightning.accumulate_grad_batches=2",
    ]
    assert main(argv) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 3
    assert len(windows) == 6 and all(n == 2 for n, _ in windows)
    # both micro-batches of a step see the same counts: those of the whole step
    assert all(windows[i][1] == windows[i + 1][1] for i in range(0, 6, 2))
    assert all(sum(c.values()) > 0 for _, c in windows)


@pytest.mark.slow
def test_a_run_with_contrastive_accumulation_uses_each_window_once(tmp_path, monkeypatch) -> None:
    from flava.objectives import pretraining as objectives
    from flava.train import main

    seen: list[tuple[bool, int, int]] = []  # (embedded here, size, position) per micro-batch
    real = objectives.ContrastiveWindow.embed

    def spy(self, flava):
        seen.append((self.images is None, self.size, self.position))
        return real(self, flava)

    monkeypatch.setattr(objectives.ContrastiveWindow, "embed", spy)
    argv = [
        *SMALL,
        f"training.run_dir={tmp_path / 'run'}",
        "training.lightning.max_steps=3",
        "training.lightning.accumulate_grad_batches=2",
        "training.contrastive_accumulation=true",
        "datasets.selected=[vl]",
    ]
    assert main(argv) == 0
    # each optimizer step embeds its window once, at its first micro-batch
    assert seen == [(True, 2, 0), (False, 2, 1)] * 3
