"""The shard writer: every source type to webdataset tars, manifest, resume, bad samples skipped
and counted, CLI errors and exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from flava.config import ConfigError, SourceConfig
from flava.config.loader import from_fields
from flava.data import sources
from flava.data.write_shards import main, write

from . import sample_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("writer")
    sample_data.captions_folder(root / "captions")
    sample_data.class_folder(root / "classes")
    sample_data.text_files(root / "texts")
    sample_data.hf_saved(root / "hf")
    return root


def members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_captions_folder_to_shards_and_back(data, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main([str(data / "captions"), str(out), "--shard-size", "5"]) == 0
    assert "16 samples in 4 shards" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_samples"] == 16
    assert [(s["name"], s["samples"]) for s in manifest["shards"]] == [
        ("shards-000000.tar", 5),
        ("shards-000001.tar", 5),
        ("shards-000002.tar", 5),
        ("shards-000003.tar", 1),
    ]
    assert manifest["source_config"]["type"] == "captions"
    first = members(out / "shards-000000.tar")
    originals = sorted((data / "captions" / "images").iterdir())
    assert first["000000000.jpg"] == originals[0].read_bytes()  # JPEG kept as is
    assert first["000000001.png"] == originals[1].read_bytes()  # PNG kept as is
    assert json.loads(first["000000000.json"]) == {"captions": sample_data.captions_of(0)}
    assert first["000000001.txt"].decode() == sample_data.captions_of(1)[0]
    gif = members(out / "shards-000000.tar")["000000004.jpg"]  # GIF re-encoded as JPEG
    assert sources.image_format(gif) == "jpg"
    shards = sources.TarShards(sources.expand_shards([str(out)]), shuffle_buffer=0)
    back = [s for i in range(shards.num_shards()) for s in shards.shard_samples(i)]
    assert [s.texts for s in back] == [sample_data.captions_of(i) for i in range(16)]
    rng = np.random.default_rng(0)
    assert all(shards.decode(s, "vl", rng).image.size[0] > 0 for s in back)


def test_resume_skips_complete_shards_and_rewrites_a_partial_one(data, tmp_path, monkeypatch):
    cfg = from_fields(SourceConfig, {"type": "text_files", "path": str(data / "texts")})
    source = sources.build(cfg, "train")
    out = tmp_path / "text"
    write(source, out, shard_size=10)  # 24 documents: 10, 10, 4
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    (out / "shards-000001.tar").unlink()
    (out / ".shards-000002.tar.tmp").write_bytes(b"partial")  # an interrupted write
    (out / "shards-000002.tar").unlink()
    read = []
    real = source.sample

    def counting(index):
        read.append(index)
        return real(index)

    monkeypatch.setattr(source, "sample", counting)
    manifest = write(source, out, shard_size=10)
    assert read == list(range(10, 24))  # the complete first shard is neither read nor written
    assert (out / "shards-000000.tar").stat().st_mtime_ns == before["shards-000000.tar"]
    assert not list(out.glob(".*.tmp"))
    assert [s["samples"] for s in manifest["shards"]] == [10, 10, 4] and manifest["complete"]
    assert manifest["samples_read"] == 24 and manifest["skipped"] == {}
    texts = [m.decode() for s in sorted(out.glob("*.tar")) for m in members(s).values()]
    assert len(texts) == 24 and texts[0].endswith("(document 0)")
    with pytest.raises(ConfigError, match="another source or shard size"):
        write(source, out, shard_size=7)


def test_cli_every_source_type(data, tmp_path, capsys):
    out = tmp_path / "classes"
    assert main([str(data / "classes"), str(out), "--shard-size", "8", "--processes", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["animals", "objects", "people", "textures"]
    labels = [
        int(v) for s in sorted(out.glob("*.tar")) for k, v in members(s).items() if ".cls" in k
    ]
    assert sorted(labels) == [0] * 3 + [1] * 6 + [2] * 2 + [3] * 5

    out = tmp_path / "hf"
    assert main([str(data / "hf"), str(out), "--reencode", "--quality", "80"]) == 0
    files = members(out / "shards-000000.tar")
    assert sum(k.endswith(".jpg") for k in files) == 16 and not any(".png" in k for k in files)
    assert files["000000003.txt"].decode() == sample_data.captions_of(3)[0]

    spec = tmp_path / "scenes.yaml"
    spec.write_text("type: embedded\nsize: 6\nseed: 3\n")
    assert main([str(spec), str(tmp_path / "scenes"), "--image-size", "32"]) == 0
    files = members(tmp_path / "scenes" / "shards-000000.tar")
    assert sum(k.endswith(".jpg") for k in files) == 6 and sum(".json" in k for k in files) == 6

    out = tmp_path / "docs"
    assert main(["type=text_files", f"path={data / 'texts'}", str(out), "--max-side", "9"]) == 0
    assert json.loads((out / "manifest.json").read_text())["num_samples"] == 24
    capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["{root}/missing"], "missing not found"),
        (["type=captions", "path={root}/missing"], "missing not found"),
        (["type=tfrecord", "path=x"], "not known"),
        (["{root}/hf_streamed.yaml"], "streamed"),
        (["--max-skipped-fraction", "2", "embedded"], "must be in [0, 1]"),
        (["embedded", "layout=clip_benchmark"], "labels and captions: give clip_benchmark.task"),
        (["embedded", "--layout", "clip_benchmark", "clip_benchmark.split=a/b"], "folder name"),
        (["embedded", "layout=clip_benchmark", "clip_benchmark.templates=imagenet9"], "imagenet7"),
        (["type=text_files", "path={root}", "layout=clip_benchmark"], "neither labelled images"),
    ],
)
def test_cli_errors_are_one_line(data, tmp_path, capsys, args, needle):
    (tmp_path / "hf_streamed.yaml").write_text(
        f"type: huggingface\npath: {data / 'hf'}\nstreaming: true\n"
    )
    (tmp_path / "notes.txt").write_text("a document\n")
    argv = [a.format(root=tmp_path) for a in args] + [str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1


def test_clip_benchmark_layout_of_the_scenes(tmp_path, capsys):
    from flava.data.scenes import SHAPES, ZERO_SHOT_TEMPLATES, distinct_scenes

    scenes = ["embedded", "source.size=12", "image_size=32", "layout=clip_benchmark"]
    out = tmp_path / "shapes"
    task = "clip_benchmark.task=zeroshot_classification"
    assert main([*scenes, task, "clip_benchmark.split=val", f"dst={out}", "shard_size=5"]) == 0
    assert "wds/shapes --dataset_root" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "val").iterdir()) == [
        *("0.tar", "1.tar", "2.tar"),
        *("manifest.json", "nshards.txt"),
    ]
    assert (out / "val" / "nshards.txt").read_text() == "3\n"
    assert (out / "classnames.txt").read_text().splitlines() == SHAPES
    templates = (out / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates == [t.replace("{}", "{c}") for t in ZERO_SHOT_TEMPLATES]
    labels = [int(v) for k, v in members(out / "val" / "0.tar").items() if k.endswith(".cls")]
    assert len(labels) == 5 and all(0 <= label < len(SHAPES) for label in labels)

    out = tmp_path / "captions"
    task = "clip_benchmark.task=zeroshot_retrieval"
    assert main([*scenes, task, f"dst={out}", "shard_size=100"]) == 0
    assert (out / "dataset_type.txt").read_text() == "retrieval\n"
    files = members(out / "test" / "0.tar")
    expected = distinct_scenes("train", 12, image_size=32, seed=0)  # what retrieval ranks
    texts = [files[f"{i:09d}.txt"].decode().splitlines() for i in range(len(expected))]
    assert texts == [list(scene.captions) for scene in expected] and len(texts[0]) > 1


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    sample_data.messy_captions_folder(root / "captions")
    sample_data.messy_class_folder(root / "classes")
    return root


def read_back(out: Path) -> list[sources.Sample]:
    shards = sources.TarShards(sources.expand_shards([str(out)]), shuffle_buffer=0)
    return [s for i in range(shards.num_shards()) for s in shards.shard_samples(i)]


def test_messy_captions_folder_skips_and_counts_bad_samples(messy, tmp_path, capsys):
    files = sample_data.messy_files(10)
    expected = Counter(reason for *_, reason in files if reason) + Counter(empty_text=1)
    good = [f"{i:09d}" for i, (*_, reason) in enumerate(files) if reason is None and i != 9]
    out = tmp_path / "shards"
    argv = [str(messy / "captions"), str(out), "--shard-size", "4", "--max-skipped-fraction", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.strip().splitlines()) == 1
    assert "9 samples in 3 shards" in captured.out and "4 of 13 skipped" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == dict(expected) and sum(expected.values()) == 4
    assert (manifest["samples_read"], manifest["num_samples"], manifest["complete"]) == (
        13,
        9,
        True,
    )
    shards = manifest["shards"]
    assert [s["samples"] for s in shards] == [4, 4, 1]  # --shard-size good samples per shard
    assert sum(s["samples_read"] for s in shards) == 13
    assert sum((Counter(s["skipped"]) for s in shards), Counter()) == expected
    back = read_back(out)
    assert [s.key for s in back] == good
    assert [s.texts for s in back] == [sample_data.captions_of(int(k))[:1] for k in good]
    for sample in back:
        original = (messy / "captions" / "images" / files[int(sample.key)][0]).read_bytes()
        assert sample.image == original  # JPEG / PNG stored as they are, once decoded
        assert sources.decode_image(sample.image).size[0] > 0
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    (out / "shards-000001.tar").unlink()
    assert main(argv) == 0  # rerun: the same plan, the missing shard written again identically
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before
    assert json.loads((out / "manifest.json").read_text()) == manifest


@pytest.mark.slow
def test_messy_class_folder_fails_above_max_skipped_fraction(messy, tmp_path):
    reasons = {name: reason for name, _, reason in sample_data.messy_files(12)}
    folder = sources.ImageFolder(messy / "classes")
    good = [f"{i:09d}" for i, rel in enumerate(folder.files) if reasons[Path(rel).name] is None]
    out = tmp_path / "classes"
    done = subprocess.run(
        [sys.executable, "-m", "flava.data.write_shards", str(messy / "classes"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 3 of 15 samples (20.0%) were skipped")
    assert "--max-skipped-fraction 1" in err[0] and str(out) in err[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == dict(Counter(r for r in reasons.values() if r))
    assert (manifest["samples_read"], manifest["num_samples"]) == (15, 12)
    back = read_back(out)
    assert [s.key for s in back] == good
    assert [s.label for s in back] == [folder.sample(int(k)).label for k in good]


def test_each_skip_reason_is_logged_once_with_worker_processes(tmp_path, caplog, capsys):
    """With processes=2 the workers hand their first example of each reason to the parent,
    which logs it once: one line per reason, naming the reason's first bad sample."""
    root = sample_data.captions_folder(tmp_path / "bad", count=24)
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    reasons: dict[int, str] = {}
    for i, row in enumerate(rows):  # bad samples in both workers' chunks (8 samples a task)
        if i % 5 == 1:
            row["image"], reasons[i] = f"images/gone_{i}.jpg", "image_unavailable"
        elif i % 5 == 3:
            row.pop("captions", None)
            row["caption"], reasons[i] = " ", "empty_text"
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "shards"
    argv = [f"src={root}", f"dst={out}", "processes=2", "shard_size=4", "max_skipped_fraction=1"]
    with caplog.at_level("WARNING", logger="flava.data.sources"):
        assert main(argv) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == dict(Counter(reasons.values()))
    assert {i for i in reasons if i >= 8} and {i for i in reasons if i < 8}
    lines = [r.getMessage() for r in caplog.records if r.name == "flava.data.sources"]
    assert len(lines) == 2, lines
    for reason in ("image_unavailable", "empty_text"):
        first = min(i for i, r in reasons.items() if r == reason)
        (line,) = [m for m in lines if f"[{reason}]" in m]
        assert line.startswith(f"skipping sample {first} ") and "not logged" in line
