"""Two-step pretraining of the tiny preset through main(argv), resume, and reload."""

from __future__ import annotations

import json

import pytest
import torch

from flava.checkpoints import from_pretrained
from flava.model import FlavaForPreTraining
from flava.train import main

pytestmark = pytest.mark.slow

SMALL = [
    "config=pretraining/demo.yaml",
    "training.batch_size=4",
    "training.num_workers=0",
    "training.warmup_steps=1",
    "training.lightning.limit_val_batches=1",
    "training.lightning.log_every_n_steps=1",
    "training.lightning.enable_progress_bar=false",
    # last.ckpt at the end only: a periodic checkpoint (~170 MB) costs more than a tiny step;
    # the tests that kill a run mid-way ask for one every step (EVERY_STEP)
    "training.lightning_checkpoint.every_n_train_steps=null",
    "training.lightning_checkpoint.save_top_k=1",  # keep the newest and last.ckpt
    "training.evaluation.num_samples=8",
    "model.kmeans_codes=16",
    "model.kmeans_images=16",
    "datasets.vl.val=[{type: embedded, size: 16}]",
    "datasets.image.val=[{type: embedded, size: 16}]",
    "datasets.text.val=[{type: embedded, size: 16}]",
    "datasets.sampling=round_robin",
    "training.lr_decay_steps=4",
]
EVERY_STEP = "training.lightning_checkpoint.every_n_train_steps=1"
"""A periodic checkpoint at every step, for the tests that kill a run after one."""


def test_train_resume_and_reload(tmp_path):
    straight = tmp_path / "straight"
    assert main([*SMALL, f"training.run_dir={straight}", "training.lightning.max_steps=4"]) == 0
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["steps"] == 4
    for key in (
        "before/val/mim",
        "after/val/mlm",
        "after/val/contrastive",
        "after/retrieval/image_to_text/R@1",
        "after/zero_shot/top1",
    ):
        assert key in metrics, key
    assert (straight / "config.yaml").exists() and (straight / "curves.png").exists()
    assert (straight / "checkpoints" / "last.ckpt").exists()

    part = tmp_path / "part"
    assert main([*SMALL, f"training.run_dir={part}", "training.lightning.max_steps=2"]) == 0
    last = part / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["PretrainingData"]["start_batch"] == 2
    assert "kmeans.centroids" in ckpt["state_dict"]
    resumed = tmp_path / "resumed"
    assert (
        main(
            [
                *SMALL,
                f"training.run_dir={resumed}",
                "training.lightning.max_steps=4",
                f"training.lightning_load_from_checkpoint={last}",
            ]
        )
        == 0
    )

    a = from_pretrained(FlavaForPreTraining, straight / "model").state_dict()
    b = from_pretrained(FlavaForPreTraining, resumed / "model").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-identical on CPU in fp32


@pytest.mark.slow
def test_a_warm_start_from_a_run_keeps_its_kmeans_codebook(tmp_path, caplog):
    """The MIM heads of runs/<x>/model predict ids of its k-means codebook: a run started from
    that model reads the codebook back instead of fitting a new one (same ids, same patches)."""
    from safetensors.torch import load_file

    from flava.objectives.targets import KMeansCodebook

    first = tmp_path / "first"
    assert main([*SMALL, f"training.run_dir={first}", "training.lightning.max_steps=1"]) == 0
    saved = load_file(first / "model" / "kmeans_codebook.safetensors")
    warm = tmp_path / "warm"
    # another seed: a codebook fitted afresh would differ
    args = [*SMALL, f"training.run_dir={warm}", "training.lightning.max_steps=1", "training.seed=5"]
    with caplog.at_level("INFO"):
        assert (
            main(
                [*args, f"model.pretrained_model_key={first / 'model'}", "model.mim_target=kmeans"]
            )
            == 0
        )
    assert "k-means MIM codebook (16 codes) loaded from" in caplog.text
    again = load_file(warm / "model" / "kmeans_codebook.safetensors")
    ids = []
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for state in (saved, again):
        kmeans = KMeansCodebook(16, 16)
        kmeans.load_state_dict(state)
        ids.append(kmeans(images))
    assert torch.equal(ids[0], ids[1])
    # a codebook of another size than model.kmeans_codes is refused in one line
    wrong = [*args, f"model.pretrained_model_key={first / 'model'}", "model.kmeans_codes=32"]
    assert main([*wrong, f"training.run_dir={tmp_path / 'wrong'}"]) == 2


def test_a_text_only_run_needs_no_kmeans_codebook(tmp_path):
    """The unimodal text stage: k-means targets are not fitted (no images) nor written."""
    run = tmp_path / "text"
    args = [*SMALL, f"training.run_dir={run}", "training.lightning.max_steps=1"]
    assert main([*args, "datasets.selected=[text]", "training.evaluation.enabled=false"]) == 0
    assert (run / "model" / "model.safetensors").exists()
    assert not (run / "model" / "kmeans_codebook.safetensors").exists()


@pytest.mark.slow
def test_a_run_starts_from_a_stage_and_resumes_without_it(tmp_path, monkeypatch):
    """A run with init_from on a unimodal stage's run directory starts with that stage's text
    encoder bit for bit; resumed, it reads its checkpoint only (the stage may be gone)."""
    import shutil

    from flava.training import factory

    stage = tmp_path / "stage"
    assert main([*SMALL, f"training.run_dir={stage}", "training.lightning.max_steps=1"]) == 0
    built = []
    build = factory.build_pretraining_model

    def spy(mcfg, *args):
        model, kmeans = build(mcfg, *args)
        built.append({k: v.clone() for k, v in model.flava.text_encoder.state_dict().items()})
        return model, kmeans

    monkeypatch.setattr(factory, "build_pretraining_model", spy)
    run = tmp_path / "run"
    init = f"model.init_from=[{{part: text_encoder, path: {stage}}}]"
    args = [*SMALL, f"training.run_dir={run}", init]
    assert main([*args, "training.lightning.max_steps=1"]) == 0
    saved = from_pretrained(FlavaForPreTraining, stage / "model").flava.text_encoder.state_dict()
    assert built[0].keys() == saved.keys()
    assert all(torch.equal(built[0][k], saved[k]) for k in saved)
    shutil.rmtree(stage)
    last = run / "checkpoints" / "last.ckpt"
    resumed = [
        *args,
        "training.lightning.max_steps=2",
        f"training.lightning_load_from_checkpoint={last}",
    ]
    assert main(resumed) == 0


def test_a_text_length_past_the_text_positions_fails_in_one_line(tmp_path, capsys):
    args = [*SMALL, f"training.run_dir={tmp_path / 'run'}", "datasets.text.text_max_length=200"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "error: datasets.text.text_max_length=200 is more than the text encoder's 128 positions; "
        "set it to at most 128"
    )


def test_a_run_resumed_in_its_own_directory_keeps_the_earlier_logged_steps(tmp_path):
    """Lightning's CSV logger writes over logs/metrics.csv: the rows before a resume are kept
    aside and read back, so metrics.json and curves.png cover the whole run."""
    from flava.checkpoints.run_dir import RunDir
    from flava.training.logged import read_logged

    run = tmp_path / "run"
    args = [*SMALL, f"training.run_dir={run}"]
    assert main([*args, "training.lightning.max_steps=3"]) == 0
    before = [r["step"] for r in read_logged(RunDir(run)) if "train/loss" in r]
    last = run / "checkpoints" / "last.ckpt"
    assert (
        main(
            [
                *args,
                "training.lightning.max_steps=5",
                f"training.lightning_load_from_checkpoint={last}",
            ]
        )
        == 0
    )
    assert (run / "logs" / "metrics.before-0.csv").exists()
    steps = [r["step"] for r in read_logged(RunDir(run)) if "train/loss" in r]
    assert steps[: len(before)] == before and len(steps) == len(set(steps)) == 5
