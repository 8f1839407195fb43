"""flava.embed on onnxruntime (embed.runtime=onnx): the same shards as the PyTorch run's, to
cosine 0.9999, and one-line errors when the export or onnxruntime is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flava.embed import main

pytest.importorskip("onnxruntime")

ARGS = ["embed.progress=false", "embed.batch_size=4", "data.max_skipped_fraction=1"]


@pytest.fixture(scope="module")
def onnx_dir(tiny_model, tmp_path_factory) -> Path:
    from flava.convert import main as convert

    out = tmp_path_factory.mktemp("onnx") / "tiny"
    assert convert([str(tiny_model), str(out), "--to", "onnx"]) == 0
    return out


def _embed(tiny_model: Path, folder: Path, out: Path, *extra: str) -> int:
    source = ["data.source.type=captions", f"data.source.path={folder}"]
    return main([f"model.pretrained_model_key={tiny_model}", f"out={out}", *source, *ARGS, *extra])


def _rows(out: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    keys = pq.read_table(out / "table").column("key").to_pylist()
    arrays = {
        f: np.concatenate([np.load(p) for p in sorted((out / f).glob("*.npy"))]).astype(np.float32)
        for f in ("image", "text")
    }
    return keys, arrays


def test_onnx_shards_equal_the_pytorch_runs(tiny_model, messy_pairs, onnx_dir, tmp_path):
    assert _embed(tiny_model, messy_pairs, tmp_path / "pt", "embed.precision=fp32") == 0
    onnx = ["embed.runtime=onnx", f"embed.onnx_dir={onnx_dir}"]
    assert _embed(tiny_model, messy_pairs, tmp_path / "ort", *onnx) == 0
    keys_pt, pt = _rows(tmp_path / "pt")
    keys_ort, ort = _rows(tmp_path / "ort")
    assert keys_pt == keys_ort and len(keys_pt) >= 8
    for field in ("image", "text"):
        cos = (pt[field] * ort[field]).sum(1)  # both normalised (to float16 precision)
        cos /= np.linalg.norm(pt[field], axis=1) * np.linalg.norm(ort[field], axis=1)
        assert cos.min() >= 0.9999, (field, cos.min())
    import json

    manifest = json.loads((tmp_path / "ort" / "manifest.json").read_text())
    assert manifest["settings"]["runtime"]["onnx_dir"] == str(onnx_dir)
    assert manifest["settings"]["precision"] == "fp32"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["embed.runtime=onnx"], "embed.onnx_dir"),
        (["embed.runtime=onnx", "embed.onnx_dir=/no/such/export"], "flava.convert"),
        (["embed.runtime=onnx", "embed.onnx_dir=x", "embed.precision=bf16"], "fp32"),
    ],
)
def test_missing_export_fails_in_one_line(
    extra, message, tiny_model, messy_pairs, tmp_path, capsys
):
    assert _embed(tiny_model, messy_pairs, tmp_path / "o", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_missing_onnxruntime_fails_in_one_line(
    tiny_model, messy_pairs, onnx_dir, tmp_path, capsys, monkeypatch
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a)
    )
    extra = ["embed.runtime=onnx", f"embed.onnx_dir={onnx_dir}"]
    assert _embed(tiny_model, messy_pairs, tmp_path / "o", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install" in err and "onnxruntime" in err, err
