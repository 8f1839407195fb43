"""Evaluation on the user's own validation data during pretraining: retrieval with every caption
on a captions folder, zero-shot on a labelled image folder, bad files skipped and counted."""

from __future__ import annotations

import json

import pytest

from flava.config import ConfigError, RunConfig, load_config, validate
from flava.data.transforms import image_transform
from flava.tasks.eval_sets import evaluation_sets, scene_evaluation_set
from flava.train import main

from ..data import sample_data

SMALL = [
    "config=pretraining/demo.yaml",
    "model.preset=tiny",
    "training.batch_size=4",
    "training.num_workers=0",
    "training.warmup_steps=1",
    "training.lightning.max_steps=4",
    "training.lightning.limit_val_batches=1",
    "training.lightning.log_every_n_steps=1",
    "training.lightning.enable_progress_bar=false",
    "training.lightning_checkpoint.every_n_train_steps=null",
    "training.lr_decay_steps=4",
    "training.evaluation.num_samples=16",
    "training.evaluation.every_n_steps=2",
    "model.kmeans_codes=16",
    "model.kmeans_images=16",
    "datasets.selected=[vl,image]",
    "datasets.sampling=round_robin",
    "datasets.max_skipped_fraction=1",
]
DIRECTIONS = ("image_to_text", "text_to_image")


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_own_data")
    sample_data.messy_captions_folder(root / "pairs")
    sample_data.messy_class_folder(root / "classes")
    return root


def _entries(kind: str, path) -> list[str]:
    entry = f"[{{type: {kind}, path: '{path}'}}]"
    key = "vl" if kind == "captions" else "image"
    return [f"datasets.{key}.train={entry}", f"datasets.{key}.val={entry}"]


@pytest.mark.slow
def test_pretraining_evaluates_on_own_captions_and_class_folders(messy, tmp_path):
    run_dir = tmp_path / "run"
    argv = [*SMALL, f"training.run_dir={run_dir}"]
    argv += _entries("captions", messy / "pairs") + _entries("image_folder", messy / "classes")
    assert main(argv) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = [f"retrieval/{d}/R@{k}" for d in DIRECTIONS for k in (1, 5, 10)]
    keys += ["zero_shot/top1", "zero_shot/top5"]
    for when in ("before", "after"):
        for key in keys:
            assert 0 <= metrics[f"{when}/{key}"] <= 1, (when, key)
    # 9 usable pictures of 10 with 1 caption each; 12 labelled pictures in 4 classes
    assert metrics["eval/samples/retrieval_images"] == 9
    assert metrics["eval/samples/retrieval_captions"] == 9
    assert metrics["eval/samples/zero_shot_images"] == 12
    # the SVG, zero-byte and truncated files of both folders, the empty caption of one
    assert metrics["eval/skipped/unsupported_image_format"] == 2
    assert metrics["eval/skipped/zero_byte_image"] == 2
    assert metrics["eval/skipped/truncated_image"] == 2
    assert metrics["eval/skipped/empty_text"] == 1
    history = metrics["eval/history"]
    assert [h["step"] for h in history] == [0, 2, 4]
    assert all(set(keys) <= set(h) for h in history)
    assert history[0] == {"step": 0, **{k: metrics[f"before/{k}"] for k in keys}}
    assert (run_dir / "curves.png").stat().st_size > 0
    logged = (run_dir / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "eval/retrieval/image_to_text/R@1" in logged and "eval/zero_shot/top1" in logged


def _cfg(tmp_path, *extra: str):
    return load_config(
        [*SMALL, f"training.run_dir={tmp_path / 'run'}", *extra], RunConfig, validate
    )


def test_zero_shot_class_names_and_templates_from_files(messy, tmp_path):
    names = ["a dog", "a thing", "a person", "a surface"]
    (tmp_path / "names.json").write_text(json.dumps(names))
    (tmp_path / "templates.json").write_text(json.dumps(["{} here.", "art of {}."]))
    cfg = _cfg(
        tmp_path,
        "datasets.selected=[image]",
        *_entries("image_folder", messy / "classes"),
        f"training.evaluation.class_names={tmp_path / 'names.json'}",
        f"training.evaluation.templates={tmp_path / 'templates.json'}",
    )
    sets, counts = evaluation_sets(cfg, 32, image_transform("eval", image_size=32))
    (data,) = sets
    assert data.class_names == names and data.templates == ["{} here.", "art of {}."]
    assert data.captions == [] and len(data.images) == 12 and set(data.labels) == {0, 1, 2, 3}
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in data.images)
    assert counts["eval/skipped/truncated_image"] == 1

    cfg.training.evaluation.class_names = None
    cfg.training.evaluation.templates = "imagenet7"
    (data,) = evaluation_sets(cfg, 32, image_transform("eval", image_size=32))[0]
    assert data.class_names == ["animals", "objects", "people", "textures"]
    assert len(data.templates) == 7

    (tmp_path / "names.json").write_text(json.dumps(names[:2]))
    cfg.training.evaluation.class_names = str(tmp_path / "names.json")
    with pytest.raises(ConfigError, match="training.evaluation.class_names has 2 names"):
        evaluation_sets(cfg, 32, image_transform("eval", image_size=32))


def test_embedded_validation_keeps_the_scene_set(tmp_path):
    cfg = load_config(
        ["config=pretraining/demo.yaml", f"training.run_dir={tmp_path}"], RunConfig, validate
    )
    sets, counts = evaluation_sets(cfg, 64, image_transform("eval", image_size=64))
    expected = scene_evaluation_set(256, 64, 0)
    assert counts == {} and len(sets) == 1 and sets[0].name == ""
    assert sets[0].captions == expected.captions and sets[0].labels == expected.labels
    assert [im.tobytes() for im in sets[0].images[:8]] == [
        im.tobytes() for im in expected.images[:8]
    ]


def test_evaluation_keys_are_checked_before_any_work(messy, tmp_path, capsys):
    base = ["config=pretraining/demo.yaml", f"training.run_dir={tmp_path}"]
    assert main([*base, "training.evaluation.templates=nowhere.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "training.evaluation.templates" in err and len(err.splitlines()) == 1
    folder = f"datasets.vl.val=[{{type: image_folder, path: '{messy / 'classes'}'}}]"
    assert main([*base, "model.preset=tiny", folder]) == 2
    err = capsys.readouterr().err.strip()
    assert "datasets.vl.val[0] (image_folder): gives image samples, not vl" in err
    assert len(err.splitlines()) == 1
    own = [f"datasets.vl.val=[{{type: captions, path: '{tmp_path}'}}]"]
    cfg = load_config([*base, *own, "training.evaluation.num_samples=5000"], RunConfig, validate)
    assert cfg.training.evaluation.num_samples == 5000


def test_retrieval_sets_from_every_source_type_keep_every_caption(tmp_path):
    from flava.data.write_shards import main as write_shards

    sample_data.captions_folder(tmp_path / "pairs")
    sample_data.hf_saved(tmp_path / "hf")
    assert write_shards([str(tmp_path / "pairs"), str(tmp_path / "wds"), "--shard-size", "5"]) == 0
    entries = {
        "captions": f"{{type: captions, path: '{tmp_path / 'pairs'}'}}",
        "webdataset": f"{{type: webdataset, shards: ['{tmp_path / 'wds'}']}}",
        "huggingface": f"{{type: huggingface, path: '{tmp_path / 'hf'}', "
        "rename_columns: [[caption, text]]}",
    }
    # 16 pictures, 3 of them with 2 captions; the saved Hugging Face validation split: 8, 1 each
    expected = {"captions": (16, 19), "webdataset": (16, 19), "huggingface": (8, 8)}
    transform = image_transform("eval", image_size=32)
    for name, entry in entries.items():
        cfg = _cfg(tmp_path, "datasets.selected=[vl]", f"datasets.vl.val=[{entry}]")
        (data,), counts = evaluation_sets(cfg, 32, transform)
        assert (len(data.images), sum(map(len, data.captions))) == expected[name], name
        assert counts["eval/samples/retrieval_captions"] == expected[name][1], name
        assert not any(k.startswith("eval/skipped/") for k in counts), name
    both = f"datasets.vl.val=[{entries['captions']}, {entries['huggingface']}]"
    cfg = _cfg(tmp_path, "datasets.selected=[vl]", both)
    (data,), _ = evaluation_sets(cfg, 32, transform)
    assert len(data.images) == 16  # 8 from each entry
