"""flava.zero_shot, flava.retrieval and flava.linear_probe end to end on tiny data."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from flava import linear_probe, retrieval, zero_shot
from flava.tasks.zero_shot import is_imagenet_style

FAST = ["model.preset=tiny", "run.progress=false", "run.num_workers=0", "run.batch_size=8"]


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_zero_shot_embedded_and_image_folder(tmp_path, capsys):
    run_dir = tmp_path / "zs"
    assert zero_shot.main([*FAST, f"run.run_dir={run_dir}", "data.size=12"]) == 0
    m = _metrics(run_dir)
    assert m["images"] == 12 and m["classes"] == 7 and m["templates"] == 6
    assert 0 <= m["zero_shot/top1"] <= m["zero_shot/top5"] <= 1
    assert "zero_shot/top1" in capsys.readouterr().out

    for c, colour in (("red_thing", (255, 0, 0)), ("blue_thing", (0, 0, 255))):
        (tmp_path / "imgs" / "val" / c).mkdir(parents=True)
        Image.new("RGB", (80, 64), colour).save(tmp_path / "imgs" / "val" / c / "0.png")
    names, templates = tmp_path / "names.json", tmp_path / "templates.json"
    names.write_text(json.dumps(["blue", "red"]))
    templates.write_text(json.dumps(["a {} picture", "something {}"]))
    argv = [
        *FAST,
        f"run.run_dir={tmp_path / 'zs2'}",
        "data.kind=image_folder",
        f"data.root={tmp_path / 'imgs'}",
        f"zero_shot.class_names={names}",
        f"zero_shot.templates={templates}",
    ]
    assert zero_shot.main(argv) == 0
    m = _metrics(tmp_path / "zs2")
    assert m["images"] == 2 and m["classes"] == 2 and m["templates"] == 2
    assert m["zero_shot/top5"] == 1.0  # only two classes


def test_zero_shot_defaults_for_folders():
    assert is_imagenet_style([f"n{i:08d}" for i in range(1000)])
    assert not is_imagenet_style(["cat", "dog"])


@pytest.mark.slow
def test_retrieval_embedded_with_cache_reuse(tmp_path, monkeypatch):
    run_dir = tmp_path / "ret"
    argv = [*FAST, f"run.run_dir={run_dir}", "data.size=8"]
    assert retrieval.main(argv) == 0
    first = _metrics(run_dir)
    assert first["images"] == 8 and first["captions"] == 32 and first["cache_hit"] is False
    assert set(first) >= {
        f"retrieval/{d}/R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)
    }
    cache = list((run_dir / "cache").glob("*.pt"))
    assert len(cache) == 1 and cache[0].name.startswith("tiny-random-embedded-test-")

    def refuse(*args, **kwargs):
        raise AssertionError("embeddings were recomputed instead of read from the cache")

    monkeypatch.setattr("flava.tasks.retrieval.embed_images", refuse)
    assert retrieval.main(argv) == 0
    second = _metrics(run_dir)
    assert second["cache_hit"] is True
    for key, value in first.items():
        if key.startswith("retrieval/"):
            assert second[key] == pytest.approx(value)
    monkeypatch.undo()
    # another model (seed) -> another cache entry
    assert retrieval.main([*argv, "run.seed=1"]) == 0
    assert len(list((run_dir / "cache").glob("*.pt"))) == 2


def test_retrieval_captions_folder_and_offline_coco(tmp_path, capsys):
    folder = tmp_path / "caps"
    folder.mkdir()
    lines = []
    for i, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        Image.new("RGB", (70, 64), colour).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "captions": [f"image {i}", "a colour"]}))
    (folder / "captions.jsonl").write_text("\n".join(lines))
    run_dir = tmp_path / "ret"
    argv = [*FAST, f"run.run_dir={run_dir}", "data.kind=captions", f"data.root={folder}"]
    assert retrieval.main([*argv, "retrieval.use_cache=false"]) == 0
    m = _metrics(run_dir)
    assert m["images"] == 3 and m["captions"] == 6 and m["cache"] is None
    assert m["retrieval/image_to_text/R@5"] == 1.0  # 6 texts: 5 always include one of two

    missing = tmp_path / "coco"
    assert retrieval.main([*FAST, "data.kind=coco", f"data.root={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dataset_coco.json" in err and len(err.splitlines()) == 1
    assert retrieval.main([*FAST, "data.kind=flickr", f"run.run_dir={run_dir}"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("features", ["encoder_cls", "projection"])
def test_linear_probe_embedded(tmp_path, features):
    run_dir = tmp_path / features
    argv = [
        *FAST,
        f"run.run_dir={run_dir}",
        f"probe.features={features}",
        "probe.train_size=28",
        "probe.val_size=12",
        "probe.test_size=12",
        "probe.l2_points=3",
        "probe.max_iter=50",
    ]
    assert linear_probe.main(argv) == 0
    m = _metrics(run_dir)
    assert m["features"] == features and m["classes"] == 7
    assert (m["train_images"], m["val_images"], m["test_images"]) == (28, 12, 12)
    assert len(m["sweep"]) == 3 and m["probe/l2"] in [s["l2"] for s in m["sweep"]]
    assert 0 <= m["probe/test_accuracy"] <= 1 and m["feature_dim"] == 128
    assert m["probe/sklearn_C"] == pytest.approx(1 / (40 * m["probe/l2"]))


def test_linear_probe_holds_out_validation_from_train_folder(tmp_path, capsys):
    for split, count in (("train", 5), ("test", 2)):
        for c, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (64, 64), colour).save(tmp_path / split / c / f"{i}.png")
    argv = [
        *FAST,
        f"run.run_dir={tmp_path / 'run'}",
        "data.kind=image_folder",
        f"data.root={tmp_path}",
        "probe.l2_points=2",
        "probe.max_iter=100",
        "probe.val_fraction=0.2",
    ]
    assert linear_probe.main(argv) == 0
    m = _metrics(tmp_path / "run")
    assert (m["train_images"], m["val_images"], m["test_images"]) == (8, 2, 4)
    assert m["probe/test_accuracy"] == 1.0  # two flat colours are linearly separable
    assert linear_probe.main([*FAST, "data.kind=image_folder", "data.root=/nonexistent"]) == 2
    assert "/nonexistent/train" in capsys.readouterr().err
