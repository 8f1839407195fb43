"""Tiny fine-tuning runs through flava.finetune.main: one per modality, resume, fast failures."""

from __future__ import annotations

import json

import pytest
import torch

from flava.checkpoints import load_finetuned
from flava.finetune import main

SMALL = [
    "training.batch_size=4",
    "training.num_workers=0",
    "training.warmup_steps=1",
    "training.lightning.log_every_n_steps=1",
    "training.lightning.enable_progress_bar=false",
    "training.lightning.val_check_interval=2",
    "training.lightning_checkpoint.save_top_k=0",  # only last.ckpt and the best one
    "data.train.size=16",
    "data.val=[{name: val, size: 8}]",
]


def _run(tmp_path, name, config, steps, *extra):
    run_dir = tmp_path / name
    argv = [
        f"config=finetuning/{config}.yaml",
        *SMALL,
        f"training.run_dir={run_dir}",
        f"training.lightning.max_steps={steps}",
        *extra,
    ]
    assert main(argv) == 0
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_image_classification_run_and_reload(tmp_path):
    run_dir, metrics = _run(tmp_path, "image", "embedded_image", 3)
    assert metrics["steps"] == 3 and metrics["monitor"] == "val/accuracy"
    for key in ("final/val/accuracy", "best/val/accuracy", "baseline/majority/val/accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["best_step"] in (2, 3)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert metrics["best_checkpoint"] and (run_dir / "config.yaml").exists()
    model, info = load_finetuned(run_dir / "model")
    assert info["modality"] == "image" and len(info["class_names"]) == 7
    with torch.no_grad():
        logits = model.eval()(pixel_values=torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 7)


@pytest.mark.slow
def test_text_pair_run_resumes_exactly(tmp_path):
    extra = (
        "model.head.dropout=0.0",
        "training.lr_decay_steps=4",  # the same schedule for the 2-step part
    )
    straight, metrics = _run(tmp_path, "straight", "embedded_pair", 4, *extra)
    assert "final/val/f1" in metrics and "best/val/accuracy" in metrics
    part, _ = _run(tmp_path, "part", "embedded_pair", 2, *extra)
    last = part / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["FinetuneData"]["start_batch"] == 2
    resumed, _ = _run(
        tmp_path,
        "resumed",
        "embedded_pair",
        4,
        *extra,
        f"training.lightning_load_from_checkpoint={last}",
    )
    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


@pytest.mark.slow
def test_multimodal_vqa_run(tmp_path):
    _, metrics = _run(tmp_path, "vqa", "embedded_vqa", 2, "data.text_max_length=24")
    assert 0.0 <= metrics["final/val/vqa_accuracy"] <= 1.0
    assert "baseline/majority/val/vqa_accuracy" in metrics


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["config=finetuning/qnli.yaml"], "GLUE qnli"),
        (["config=finetuning/vqa.yaml", "data.root=MISSING"], "questions"),
        (["config=finetuning/cifar10.yaml", "data.root=MISSING"], "CIFAR10"),
        (["config=finetuning/embedded_image.yaml", "task.metrics=[bleu]"], "task.metrics"),
        (["config=finetuning/embedded_image.yaml", "task.modality=text"], "task.modality"),
        (["config=finetuning/stsb.yaml", "task.type=classification"], "task.metrics"),
        (["config=finetuning/embedded_image.yaml", "training.lightning.max_stepz=3"], "max_stepz"),
    ],
)
def test_bad_or_offline_configs_exit_2_in_one_line(tmp_path, capsys, argv, needle):
    argv = [a.replace("MISSING", str(tmp_path / "missing")) for a in argv]
    assert main([*argv, f"training.run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()
