"""`python -m flava.clip_benchmark`: LAION's CLIP_benchmark (its datasets and metric code) with
FLAVA registered, on shards `flava-write-shards layout=clip_benchmark` wrote; its figures equal
`flava.zero_shot`'s and `flava.retrieval`'s on the same data; other model types pass through."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from flava.checkpoints import save_pretrained
from flava.clip_benchmark import main
from flava.data.write_shards import main as write_shards
from flava.model import FlavaModel, preset
from flava.retrieval import main as retrieval
from flava.zero_shot import main as zero_shot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import sample_data

FORMATS = [("JPEG", "jpg"), ("PNG", "png")]  # stored as they are: both sides read the same pixels
PICTURES = [p for p in sample_data.PICTURES if p[0] != "cat"]  # skimage's cat is chelsea: a tie


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model; 8 classes of 2 RGB pictures each; 15 captioned RGB pictures."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    save_pretrained(FlavaModel(preset("tiny")), root / "model")
    for i, (name, _, _) in enumerate(PICTURES[:8]):
        (root / "classes" / f"a_{name}").mkdir(parents=True)
        image = sample_data.picture(name, "RGB", 48)
        for j, picture in enumerate([image, image.transpose(0)]):  # the picture, mirrored
            fmt, ext = FORMATS[(i + j) % 2]
            picture.save(root / "classes" / f"a_{name}" / f"{j}.{ext}", format=fmt)
    (root / "captions" / "images").mkdir(parents=True)
    with (root / "captions" / "captions.jsonl").open("w") as f:
        for i, (name, captions, _) in enumerate(PICTURES):
            fmt, ext = FORMATS[i % 2]
            sample_data.picture(name, "RGB", 48).save(root / "captions/images" / f"{i}.{ext}", fmt)
            f.write(json.dumps({"image": f"images/{i}.{ext}", "captions": captions}) + "\n")
    for data in ("classes", "captions"):
        args = [f"src={root / data}", f"dst={root / 'bench' / data}", "layout=clip_benchmark"]
        assert write_shards([*args, "shard_size=5"]) == 0
    return root


def bench(root: Path, data: str, *extra: str) -> dict:
    """CLIP_benchmark's metrics for the tiny model on the `data` set written in `root`."""
    out = root / f"{data}.json"
    args = ["eval", "--model_type", "flava", "--pretrained", str(root / "model"), "--model", "f"]
    args += ["--dataset", f"wds/{data}", "--dataset_root", str(root / "bench" / data)]
    args += ["--no_amp", "--num_workers", "0", "--batch_size", "6", "--output", str(out), *extra]
    assert main(args) == 0
    return json.loads(out.read_text())["metrics"]


def test_zero_shot_figures_equal_flava_zero_shot(setup, capsys):
    layout = setup / "bench" / "classes"
    assert (layout / "test" / "nshards.txt").read_text() == "4\n"
    names = (layout / "classnames.txt").read_text().splitlines()
    assert names[:2] == ["a astronaut", "a camera"] and len(names) == 8  # "_" read as a space
    assert (layout / "zeroshot_classification_templates.txt").read_text() == "a photo of a {c}.\n"
    theirs = bench(setup, "classes")
    args = [f"model.pretrained_model_key={setup / 'model'}", "data.kind=image_folder"]
    args += [f"data.root={setup / 'classes'}", f"run.run_dir={setup / 'zs'}", "run.device=cpu"]
    assert zero_shot(args) == 0
    ours = json.loads((setup / "zs" / "metrics.json").read_text())
    assert ours["images"] == 16 and ours["classes"] == 8
    assert theirs["acc1"] == pytest.approx(ours["zero_shot/top1"], abs=1e-3)
    assert theirs["acc5"] == pytest.approx(ours["zero_shot/top5"], abs=1e-3)
    assert 0 < ours["zero_shot/top5"] < 1  # figures that could differ


def test_retrieval_figures_equal_flava_retrieval(setup):
    layout = setup / "bench" / "captions"
    assert (layout / "dataset_type.txt").read_text() == "retrieval\n"
    task = ["--task", "zeroshot_retrieval", "--recall_k", "1", "5", "10"]
    theirs = bench(setup, "captions", *task)
    args = [f"model.pretrained_model_key={setup / 'model'}", "data.kind=captions"]
    args += [f"data.root={setup / 'captions'}", f"run.run_dir={setup / 'rt'}", "run.device=cpu"]
    assert retrieval(args) == 0
    ours = json.loads((setup / "rt" / "metrics.json").read_text())
    assert ours["images"] == 15 and ours["captions"] == 18
    for k in (1, 5, 10):
        t2i, i2t = ours[f"retrieval/text_to_image/R@{k}"], ours[f"retrieval/image_to_text/R@{k}"]
        assert theirs[f"image_retrieval_recall@{k}"] == pytest.approx(t2i, abs=1e-3)
        assert theirs[f"text_retrieval_recall@{k}"] == pytest.approx(i2t, abs=1e-3)
    assert 0 < ours["retrieval/text_to_image/R@5"] < 1


def test_other_model_types_pass_through(setup, monkeypatch):
    from clip_benchmark import models

    calls = []
    real = models.TYPE2FUNC["open_clip"]

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setitem(models.TYPE2FUNC, "open_clip", spy)
    out = setup / "open_clip.json"
    args = ["eval", "--model_type", "open_clip", "--model", "ViT-S-32", "--pretrained", ""]
    args += ["--dataset", "wds/captions", "--dataset_root", str(setup / "bench" / "captions")]
    args += ["--task", "zeroshot_retrieval", "--no_amp", "--num_workers", "0"]
    assert main([*args, "--output", str(out)]) == 0
    assert [(c["model_name"], c["pretrained"]) for c in calls] == [("ViT-S-32", "")]
    metrics = json.loads(out.read_text())["metrics"]
    assert not math.isnan(metrics["image_retrieval_recall@5"])


def test_bad_input_is_one_line(setup, capsys, monkeypatch):
    args = ["eval", "--dataset", "wds/classes", "--dataset_root", str(setup / "bench" / "classes")]
    assert main([*args, "--model_type", "flava", "--pretrained", str(setup / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "nothing: no such file or directory" in err and err.count("\n") == 1
    assert main([*args, "--model_type", "nope"]) == 2  # CLIP_benchmark's own argparse error
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "clip_benchmark", None)  # as if not installed
    assert main([*args, "--model_type", "flava"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'flava[benchmark]'" in err and err.count("\n") == 1
