"""data.kind=source in flava.zero_shot, flava.retrieval and flava.linear_probe: any source type
that holds what the command reads, on small real files with the tiny preset; the named kinds
are read as the same sources (identical metrics), and a source that cannot serve the command,
or a field of another type, is refused in one line before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import sample_data

from flava import linear_probe, retrieval, zero_shot
from flava.data.write_shards import main as write_shards

FAST = ["model.preset=tiny", "run.progress=false", "run.num_workers=0", "run.batch_size=8"]
PROBE = ["probe.l2_points=3", "probe.max_iter=50"]
COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 30, 220)}


def _pngs(folder: Path, classes: dict[str, tuple[int, int, int]], count: int) -> Path:
    """folder/<class>/<i>.png: `count` PNG shades of each class's colour (kept byte for byte
    by the shard writer, so shards hold the very same images)."""
    for name, (r, g, b) in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shade = (max(0, r - 25 * i), max(0, g - 25 * i), max(0, b - 25 * i))
            Image.new("RGB", (40 + 3 * i, 36), shade).save(folder / name / f"{i}.png")
    return folder


def _run(command, args: list[str], run_dir: Path) -> dict:
    """The command's metrics.json, without its wall time."""
    assert command.main([*FAST, f"run.run_dir={run_dir}", *args]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("seconds", None)
    return metrics


def _records(path: Path, folder: Path, label=lambda i, cls: cls) -> Path:
    """A records JSONL of every image of a class folder with its label."""
    images = sorted(folder.rglob("*.png"))
    rows = [{"image": str(p), "label": label(i, p.parent.name)} for i, p in enumerate(images)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_zero_shot_on_image_folder_records_and_shards_sources(tmp_path, capsys):
    folder = _pngs(tmp_path / "classes", COLOURS, 3)
    named = _run(zero_shot, ["data.kind=image_folder", f"data.root={folder}"], tmp_path / "n")
    assert named["images"] == 9 and named["classes"] == 3 and named["split"] == "all"
    source = ["data.kind=source", "data.source.type=image_folder", f"data.source.path={folder}"]
    assert _run(zero_shot, source, tmp_path / "s") == named  # one way to read a folder
    # a records file of the same images, labelled by class name: the same classes and scores
    records = _records(tmp_path / "labels.jsonl", folder)
    by_name = _run(zero_shot, ["data.kind=source", f"data.source.path={records}"], tmp_path / "r")
    assert by_name == named
    # class numbers have no names: one line naming the fix, then the fix
    numbered = _records(
        tmp_path / "numbers.jsonl", folder, lambda i, cls: sorted(COLOURS).index(cls)
    )
    argv = [*FAST, "data.kind=source", f"data.source.path={numbered}"]
    assert zero_shot.main([*argv, f"run.run_dir={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "give zero_shot.class_names=" in err
    names = tmp_path / "names.json"
    names.write_text(json.dumps(sorted(COLOURS)))
    given = _run(zero_shot, [*argv[len(FAST) :], f"zero_shot.class_names={names}"], tmp_path / "g")
    assert given["zero_shot/top1"] == named["zero_shot/top1"]
    # webdataset shards written from the folder (labels as .cls, the class names in their
    # manifest.json), read as a stream, capped
    shards = tmp_path / "shards"
    assert write_shards([str(folder), str(shards), "--shard-size", "4"]) == 0
    stream = ["data.kind=source", "data.source.type=webdataset", f"data.source.shards=[{shards}]"]
    from_shards = _run(zero_shot, stream, tmp_path / "w")
    assert from_shards["zero_shot/top1"] == named["zero_shot/top1"]
    assert from_shards["classes"] == 3
    assert _run(zero_shot, [*stream, "data.size=4"], tmp_path / "w4")["images"] == 4
    # shards without a manifest (written elsewhere) take their names from zero_shot.class_names
    (shards / "manifest.json").unlink()
    argv = [*stream, f"zero_shot.class_names={names}"]
    assert _run(zero_shot, argv, tmp_path / "w5")["zero_shot/top1"] == named["zero_shot/top1"]


def test_retrieval_on_captions_and_shards_sources(tmp_path):
    folder = tmp_path / "pairs"
    _pngs(folder / "images", COLOURS, 2)
    rows = [
        {"image": str(p.relative_to(folder)), "captions": [f"a {p.parent.name} square", "a box"]}
        for p in sorted((folder / "images").rglob("*.png"))
    ]
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    off = "retrieval.use_cache=false"
    named = _run(retrieval, ["data.kind=captions", f"data.root={folder}", off], tmp_path / "n")
    assert named["images"] == 6 and named["captions"] == 12 and named["split"] == "all"
    source = ["data.kind=source", "data.source.type=captions", f"data.source.path={folder}", off]
    assert _run(retrieval, source, tmp_path / "s") == named
    shards = tmp_path / "shards"
    assert write_shards([str(folder), str(shards), "--shard-size", "4"]) == 0
    stream = ["data.kind=source", "data.source.type=webdataset", f"data.source.shards=[{shards}]"]
    assert _run(retrieval, [*stream, off], tmp_path / "w") == named  # every caption kept
    capped = _run(retrieval, [*stream, off, "data.size=4"], tmp_path / "w4")
    assert capped["images"] == 4 and capped["captions"] == 8


def test_retrieval_on_embedded_scenes_as_a_source(tmp_path):
    named = _run(retrieval, ["data.size=8", "retrieval.use_cache=false"], tmp_path / "n")
    source = [
        "data.kind=source",
        "data.source.type=embedded",
        "data.source.split=test",
        "data.source.size=8",
        "retrieval.use_cache=false",
    ]
    assert _run(retrieval, source, tmp_path / "s") == named  # the same distinct scenes


def test_linear_probe_on_split_folders_and_one_records_file(tmp_path):
    classes = {"red_thing": COLOURS["red"], "blue": COLOURS["blue"]}  # "_": a folder name
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        _pngs(tmp_path / "folder" / split, classes, count)
    folder = tmp_path / "folder"
    named = _run(
        linear_probe, [*PROBE, "data.kind=image_folder", f"data.root={folder}"], tmp_path / "n"
    )
    assert (named["train_images"], named["val_images"], named["test_images"]) == (8, 4, 4)
    source = ["data.kind=source", "data.source.type=image_folder", f"data.source.path={folder}"]
    assert _run(linear_probe, [*PROBE, *source], tmp_path / "s") == named
    # one records file: test, then validation carved out of it (probe.*_fraction, run.seed)
    records = _records(tmp_path / "all.jsonl", folder)
    carved = _run(
        linear_probe, [*PROBE, "data.kind=source", f"data.source.path={records}"], tmp_path / "r"
    )
    assert carved["classes"] == 2
    assert carved["train_images"] + carved["val_images"] + carved["test_images"] == 16
    assert carved["test_images"] == 3 and carved["val_images"] == 3  # 0.2 of 16, 0.2 of 13


def test_linear_probe_reads_a_sources_own_splits(tmp_path):
    saved = sample_data.hf_saved(tmp_path / "hf", count=8)  # train 8, validation 4
    argv = [
        *PROBE,
        "data.kind=source",
        "data.source.type=huggingface",
        f"data.source.path={saved}",
        "data.source.split=validation",  # the test split
        "probe.val_split=validation",
    ]
    m = _run(linear_probe, argv, tmp_path / "hf_run")
    assert (m["train_images"], m["val_images"], m["test_images"]) == (8, 4, 4)
    assert m["classes"] == len({c for *_, c in sample_data.pictures(8)})  # the ClassLabel's


REFUSED = [
    (
        zero_shot,
        ["data.source.type=text_files", "data.source.path=x.txt"],
        "data.source.type=text_files cannot serve zero_shot: it needs labelled images (use one of "
        "the types embedded, huggingface, webdataset, image_folder, records, torchvision)",
    ),
    (
        linear_probe,
        ["data.source.type=captions", "data.source.path=d"],
        "data.source.type=captions cannot serve linear_probe: it needs labelled images (use one "
        "of the types embedded, huggingface, webdataset, image_folder, records, torchvision)",
    ),
    (
        retrieval,
        ["data.source.type=image_folder", "data.source.path=d"],
        "data.source.type=image_folder cannot serve retrieval: it needs captioned images (use one "
        "of the types embedded, huggingface, webdataset, captions, records, karpathy)",
    ),
    (
        retrieval,
        ["data.source.type=image_folder", "data.source.shards=[x.tar]"],
        "data.source: `shards` is not a field of type image_folder (its fields: path, classes, "
        "weight); remove it or use type: webdataset",
    ),
    (
        zero_shot,
        ["data.root=/data/x"],
        "data.root='/data/x' is invalid: it is not read with data.kind=source; set "
        "data.source.path instead",
    ),
]


@pytest.mark.parametrize(("command", "args", "message"), REFUSED)
def test_a_source_that_cannot_serve_the_command_is_refused(
    tmp_path, capsys, command, args, message
):
    argv = [*FAST, "data.kind=source", *args, f"run.run_dir={tmp_path / 'run'}"]
    assert command.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "run").exists()  # nothing ran


def test_a_records_file_without_images_is_refused_with_the_field_to_set(tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": "a red square", "label": 1}) + "\n")
    argv = [*FAST, "data.kind=source", f"data.source.path={texts}", f"run.run_dir={tmp_path}"]
    assert zero_shot.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: data.source (records {texts}): records {texts} (1 rows)")
    assert "needs labelled images (image_column" in err and len(err.splitlines()) == 1
