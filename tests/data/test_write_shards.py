"""The shard writer: every source type to webdataset tars, manifest, resume, CLI errors."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from flava.config import ConfigError, SourceConfig
from flava.data import sources, write_shards
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
    cfg = OmegaConf.merge(
        OmegaConf.structured(SourceConfig), {"type": "text_files", "path": str(data / "texts")}
    )
    source = sources.build(cfg, "train")
    out = tmp_path / "text"
    write(source, out, shard_size=10)  # 24 documents: 10, 10, 4
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    (out / "shards-000001.tar").unlink()
    (out / ".shards-000002.tar.tmp").write_bytes(b"partial")  # an interrupted write
    (out / "shards-000002.tar").unlink()
    calls = []
    real = write_shards.write_shard

    def counting(src, path, start, stop, *args):
        calls.append(path.name)
        return real(src, path, start, stop, *args)

    monkeypatch.setattr(write_shards, "write_shard", counting)
    manifest = write(source, out, shard_size=10)
    assert sorted(calls) == ["shards-000001.tar", "shards-000002.tar"]
    assert (out / "shards-000000.tar").stat().st_mtime_ns == before["shards-000000.tar"]
    assert not list(out.glob(".*.tmp"))
    assert [s["samples"] for s in manifest["shards"]] == [10, 10, 4] and manifest["complete"]
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
    ],
)
def test_cli_errors_are_one_line(data, tmp_path, capsys, args, needle):
    (tmp_path / "hf_streamed.yaml").write_text(
        f"type: huggingface\npath: {data / 'hf'}\nstreaming: true\n"
    )
    argv = [a.format(root=tmp_path) for a in args] + [str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1
