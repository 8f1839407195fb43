"""The tiny preset trains a few steps on every source type and on a weighted shard mixture
through flava.train.main; the shipped HF / PMD configs fail fast offline with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flava.data.write_shards import main as write_shards
from flava.train import main

from ..data import sample_data

SMALL = [
    "config=pretraining/demo.yaml",
    "training.batch_size=4",
    "training.num_workers=0",
    "training.warmup_steps=1",
    "training.lightning.max_steps=3",
    "training.lightning.limit_val_batches=1",
    "training.lightning.log_every_n_steps=1",
    "training.lightning.enable_progress_bar=false",
    "training.lightning_checkpoint.every_n_train_steps=null",
    "training.evaluation.enabled=false",
    "model.kmeans_codes=16",
    "model.kmeans_images=16",
    "datasets.sampling=round_robin",
    "training.lr_decay_steps=4",
]


TINY = "model.preset=tiny"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_sources")
    sample_data.captions_folder(root / "captions")
    sample_data.captions_folder(root / "captions_csv", fmt="csv")
    sample_data.class_folder(root / "classes")
    sample_data.text_files(root / "texts")
    sample_data.hf_saved(root / "hf")
    for src, out in (("captions", "wds_pairs"), ("classes", "wds_images"), ("texts", "wds_texts")):
        assert write_shards([str(root / src), str(root / out), "--shard-size", "4"]) == 0
    assert write_shards([str(root / "hf"), str(root / "wds_hf"), "--shard-size", "6"]) == 0
    return root


def train(run_dir: Path, datasets: dict[str, tuple[str, str]]) -> dict:
    args = [
        f"datasets.{kind}.{role}={value}"
        for kind, (tr, va) in datasets.items()
        for role, value in (("train", tr), ("val", va))
    ]
    assert main([*SMALL, f"training.run_dir={run_dir}", *args]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3
    for key in ("after/val/mim", "after/val/mlm", "after/val/contrastive", "after/val/itm"):
        assert key in metrics, key
    return metrics


def test_train_on_local_folders_and_text_files(data, tmp_path):
    train(
        tmp_path / "run",
        {
            "vl": (
                f"[{{type: captions, path: '{data / 'captions_csv'}'}}]",
                f"[{{type: captions, path: '{data / 'captions'}'}}]",
            ),
            "image": (
                f"[{{type: image_folder, path: '{data / 'classes'}'}}]",
                f"[{{type: image_folder, path: '{data / 'classes'}'}}]",
            ),
            "text": (
                f"[{{type: text_files, path: '{data / 'texts'}'}}]",
                f"[{{type: text_files, path: '{data / 'texts' / 'corpus.txt'}'}}]",
            ),
        },
    )


@pytest.mark.slow
def test_train_on_huggingface_saved_and_streamed(data, tmp_path):
    hf = f"type: huggingface, path: '{data / 'hf'}'"
    train(
        tmp_path / "run",
        {
            "vl": (
                f"[{{{hf}, rename_columns: [[caption, text]], remove_columns: [extra]}}]",
                f"[{{{hf}, rename_columns: [[caption, text]], split_key_mapping: "
                "{validation: train}}]",
            ),
            "image": (f"[{{{hf}, streaming: true, stream_shards: 4}}]", f"[{{{hf}}}]"),
            "text": (
                f"[{{{hf}, text_columns: [caption]}}]",
                f"[{{{hf}, text_columns: [caption]}}]",
            ),
        },
    )


@pytest.mark.slow
def test_train_pmd_config_on_a_small_pmd_layout(data, tmp_path, monkeypatch, openai_encoder):
    """pmd.yaml as shipped (nine weighted, resampled vl shard sets, ImageNet, two text corpora,
    DALL-E targets from encoder.pkl where the original release keeps it), on small shards under
    PMD_ROOT, with the tiny preset on CPU."""
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "encoder.pkl").write_bytes(openai_encoder[0].read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root = tmp_path / "pmd"
    vl = ["coco", "sbu", "localized_narratives", "cc3m", "visual_genome", "wit", "cc12m"]
    vl += ["red_caps", "yfcc100m"]
    layout = {name: "wds_pairs" if i % 2 else "wds_hf" for i, name in enumerate(vl)}
    layout.update({"imagenet-1k": "wds_images", "ccnews": "wds_texts", "bookcorpus": "wds_texts"})
    for name, shards in layout.items():
        (root / name).mkdir(parents=True)
        for split in ("train", "val"):
            (root / name / split).symlink_to(data / shards)
    monkeypatch.setenv("PMD_ROOT", str(root))
    run_dir = tmp_path / "run"
    argv = [
        "config=pretraining/pmd.yaml",
        *SMALL[1:],
        f"training.run_dir={run_dir}",
        TINY,
        "training.lightning.accelerator=cpu",
        "training.lightning.devices=1",
        "training.lightning.strategy=auto",
        "training.lightning.precision=32",
        "training.lightning.val_check_interval=null",
        "training.warmup_steps=1",
        "model.init_from=[]",  # DINO and the text stage's output are not at hand here
        "datasets.text.text_max_length=null",  # tiny has 128 text positions, not 512
    ]
    assert main(argv) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and "after/val/mlm" in metrics and "after/val/itm" in metrics


def test_mismatched_kind_and_missing_shards_exit_2(data, tmp_path, capsys):
    base = [*SMALL, f"training.run_dir={tmp_path / 'run'}"]
    folder = f"[{{type: image_folder, path: '{data / 'classes'}'}}]"
    assert main([*base, f"datasets.text.train={folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "datasets.text.train[0] (image_folder" in err and "not text" in err
    assert len(err.splitlines()) == 1
    missing = tmp_path / "nowhere"
    assert main([*base, f"datasets.vl.val=[{{type: webdataset, shards: ['{missing}']}}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: datasets.vl.val[0]") and f"{missing} not found" in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_shipped_hub_and_pmd_configs_fail_fast_offline(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
        "PMD_ROOT": str(tmp_path / "no-pmd"),
    }
    # flava.train.run builds the model before the data module checks the datasets, so the
    # tiny preset keeps this test fast; the configs' data sections are used as shipped.
    start = time.perf_counter()
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "flava.train", f"config=pretraining/{name}.yaml", TINY],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("debug", "pmd")
    }
    results = {name: (*p.communicate(timeout=240), p.returncode) for name, p in procs.items()}
    elapsed = time.perf_counter() - start
    for name, needle in (("debug", "imagenet-1k"), ("pmd", "no-pmd/imagenet-1k/train")):
        out, err, code = results[name]
        assert code == 2, (name, err[-2000:])
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: datasets.image.train[0]"), lines
        assert needle in lines[0]
    # Both ran side by side; the time is mostly imports (the data check itself takes well under
    # a second, see tests/data/test_sources.py).
    assert elapsed < 60
