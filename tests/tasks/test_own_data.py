"""Every fine-tuning and evaluation command on real files a user brings: photographs in mixed
PNG modes plus an SVG, a zero-byte file and a truncated PNG; bad files skipped and counted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import sample_data

from flava import finetune, linear_probe, retrieval, zero_shot

BAD = {"unsupported_image_format": 1, "zero_byte_image": 1, "truncated_image": 1}
FAST = ["model.preset=tiny", "run.progress=false", "run.num_workers=0", "run.batch_size=8"]
TUNE = [
    "model.preset=tiny",
    "training.batch_size=4",
    "training.num_workers=0",
    "training.warmup_steps=1",
    "training.lightning.max_steps=3",
    "training.lightning.log_every_n_steps=1",
    "training.lightning.enable_progress_bar=false",
    "training.lightning_checkpoint.save_top_k=0",
]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _skipped(metrics: dict, prefix: str = "data/skipped/") -> dict:
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix) and v}


def _records(root: Path) -> Path:
    """records.jsonl of image / text / string label rows over the messy pictures."""
    rows = []
    for i, (file, data, _) in enumerate(sample_data.messy_files(10)):
        (root / "pics").mkdir(parents=True, exist_ok=True)
        (root / "pics" / file).write_bytes(data)
        label = "living" if i % 2 else "thing"
        rows.append(
            {"image": f"pics/{file}", "text": sample_data.captions_of(i)[0], "label": label}
        )
    path = root / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_finetune_image_text_classifier_from_jsonl_records(tmp_path, capsys):
    records = _records(tmp_path)
    run_dir = tmp_path / "run"
    argv = [
        *TUNE,
        "data.kind=source",
        f"data.source.path={records}",
        "task.modality=multimodal",
        "data.val_fraction=0.3",
        "data.max_skipped_fraction=1",
        f"training.run_dir={run_dir}",
    ]
    assert finetune.main(argv) == 0
    m = _metrics(run_dir)
    assert m["steps"] == 3 and 0 <= m["final/val/accuracy"] <= 1
    info = json.loads((run_dir / "model" / "task.json").read_text())
    assert info["class_names"] == ["living", "thing"]  # named by the data
    skipped = {**_skipped(m), **_skipped(m, "data/val_skipped/")}
    assert set(skipped) <= set(BAD) and sum(skipped.values()) >= 1
    assert m["data/samples_read"] == 12 + sum(_skipped(m).values())
    saved = (run_dir / "config.yaml").read_text()
    assert "val_fraction: 0.3" in saved  # the split is recorded with the run
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_image_classifier_from_plain_class_folder(tmp_path, capsys):
    folder = sample_data.messy_class_folder(tmp_path / "classes")
    run_dir = tmp_path / "run"
    argv = [
        *TUNE,
        "data.kind=source",
        "data.source.type=image_folder",
        f"data.source.path={folder}",
        "task.modality=image",
        "data.val_fraction=0.2",
        "data.max_skipped_fraction=1",
        f"training.run_dir={run_dir}",
    ]
    assert finetune.main(argv) == 0
    m = _metrics(run_dir)
    info = json.loads((run_dir / "model" / "task.json").read_text())
    assert info["class_names"] == ["animals", "objects", "people", "textures"]
    assert 0 <= m["final/val/accuracy"] <= 1 and m["data/samples_read"] >= 12
    # the default threshold stops with one line and a checkpoint, exit 1
    argv = [a for a in argv if "max_skipped" not in a and "run_dir" not in a]
    argv += [f"training.run_dir={tmp_path / 'strict'}", "training.lightning.max_steps=20"]
    capsys.readouterr()
    assert finetune.main(argv) == 1
    # (log handlers of the first run still point at pytest's old capture: only count errors)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "max_skipped_fraction" in errors[0]
    assert (tmp_path / "strict" / "checkpoints" / "bad-data-stop.ckpt").exists()


@pytest.mark.slow
def test_zero_shot_and_linear_probe_on_a_folder_as_it_is(tmp_path, capsys):
    folder = sample_data.messy_class_folder(tmp_path / "classes", count=20)
    common = [*FAST, "data.kind=image_folder", f"data.root={folder}"]
    zs = tmp_path / "zs"
    assert zero_shot.main([*common, f"run.run_dir={zs}", "data.max_skipped_fraction=1"]) == 0
    m = _metrics(zs)
    assert _skipped(m) == BAD and m["images"] == 20 and m["classes"] == 4
    assert m["data/samples_read"] == 23
    # above the default threshold (3 of 23): one line, exit 1, the counts still written
    assert zero_shot.main([*common, f"run.run_dir={tmp_path / 'zs2'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 of 23" in err[0]
    assert _skipped(_metrics(tmp_path / "zs2")) == BAD

    lp = tmp_path / "lp"
    argv = [*common, f"run.run_dir={lp}", "data.max_skipped_fraction=1", "probe.l2_points=3"]
    assert linear_probe.main(argv) == 0
    m = _metrics(lp)
    assert _skipped(m) == BAD
    assert m["train_images"] + m["val_images"] + m["test_images"] == 20
    assert m["test_images"] >= 3 and m["val_images"] >= 3


def test_retrieval_on_a_captions_folder_with_text_fields(tmp_path, capsys):
    folder = sample_data.messy_captions_folder(tmp_path / "caps")
    run_dir = tmp_path / "ret"
    argv = [*FAST, "data.kind=captions", f"data.root={folder}", f"run.run_dir={run_dir}"]
    assert retrieval.main([*argv, "data.max_skipped_fraction=1"]) == 0
    m = _metrics(run_dir)
    assert _skipped(m) == {**BAD, "empty_text": 1}
    assert m["images"] == 9 and m["captions"] == 9
    assert 0 <= m["retrieval/image_to_text/R@1"] <= m["retrieval/image_to_text/R@10"] <= 1
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv"])
def test_retrieval_reads_the_captions_file_pretraining_reads(tmp_path, fmt):
    folder = sample_data.captions_folder(tmp_path / "caps", count=6, fmt=fmt)
    run_dir = tmp_path / "ret"
    argv = [*FAST, "data.kind=captions", f"data.root={folder}", f"run.run_dir={run_dir}"]
    assert retrieval.main(argv) == 0
    m = _metrics(run_dir)
    assert m["images"] == 6 and m["captions"] == sum(
        len(sample_data.captions_of(i)) for i in range(6)
    )


@pytest.mark.slow
def test_readme_own_data_commands(tmp_path):
    """The two README commands, on real files, with the tiny preset and a few steps."""
    records = _records(tmp_path / "memes")
    folder = sample_data.messy_class_folder(tmp_path / "my_classes")
    small = [*TUNE, "data.max_skipped_fraction=1", "training.learning_rate=1e-4"]
    commands = [
        [f"data.source.path={records}", "task.modality=multimodal", "data.val_fraction=0.2"],
        [
            "data.source.type=image_folder",
            f"data.source.path={folder}",
            "task.modality=image",
            "data.val_fraction=0.2",
        ],
    ]
    for n, args in enumerate(commands):
        run_dir = tmp_path / f"run{n}"
        argv = ["config=finetuning/own_data.yaml", *args, *small, f"training.run_dir={run_dir}"]
        assert finetune.main(argv) == 0
        assert (run_dir / "model" / "head.safetensors").exists()


@pytest.mark.slow
def test_a_validation_split_never_rereads_the_training_file(tmp_path, capsys):
    records = _records(tmp_path)
    argv = [*TUNE, "data.kind=source", f"data.source.path={records}", "task.modality=text"]
    assert finetune.main([*argv, f"training.run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: data.val[0] would read the training data again")
    val = tmp_path / "val.jsonl"
    val.write_text(records.read_text())
    argv += [f"data.val=[{{path: {val}}}]", f"training.run_dir={tmp_path / 'run2'}"]
    assert finetune.main(argv) == 0  # a text classifier: images are not read at all
    m = _metrics(tmp_path / "run2")
    assert not _skipped(m) and "final/val/accuracy" in m
