"""flava.embed on real file layouts: the shards read with numpy and pyarrow alone hold the
embeddings the model gives each record, bad records are skipped and counted, a crashed run
resumes with every record embedded once, and a folder of other settings is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from flava.embed import main

from ..data import sample_data
from .conftest import WDS_PER_SHARD, WDS_SHARDS

FAST = ["embed.progress=false", "embed.precision=fp32", "embed.batch_size=3"]


def embed_args(model: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.pretrained_model_key={model}", f"out={out}", *FAST, *extra]


def captions_args(folder: Path) -> list[str]:
    return ["data.source.type=captions", f"data.source.path={folder}"]


def read_folder(out: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every table row and the arrays, as a numpy + pyarrow user reads them."""
    rows = pq.read_table(out / "table").to_pylist()
    arrays = {}
    for kind in ("image", "text"):
        files = sorted((out / kind).glob("shard-*.npy"))
        if files:
            arrays[kind] = np.concatenate([np.load(f) for f in files])
    return rows, arrays


def reference(model_dir: Path, rows: list[dict]) -> dict[str, torch.Tensor]:
    """Each row's image and caption embedded one at a time by the model itself."""
    from flava import from_pretrained
    from flava.data.sources import decode_image
    from flava.data.tokenizer import load_tokenizer
    from flava.data.transforms import image_transform
    from flava.model import FlavaModel

    model = from_pretrained(FlavaModel, model_dir).eval()
    transform = image_transform("eval", image_size=model.config.image.image_size)
    tokenizer = load_tokenizer()
    images, texts = [], []
    with torch.no_grad():
        for row in rows:
            pixels = transform(decode_image(row["path"]))["pixel_values"][None]
            images.append(model.encode_image(pixels)[0])
            tok = tokenizer([row["caption"]])
            texts.append(model.encode_text(tok["input_ids"], tok["attention_mask"])[0])
    return {
        "image": F.normalize(torch.stack(images), dim=-1),
        "text": F.normalize(torch.stack(texts), dim=-1),
    }


@pytest.mark.parametrize(
    "compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"]
)
def test_captions_folder_shards_hold_the_models_embeddings(
    tiny_model, messy_pairs, tmp_path, compiled
):
    """Compiled: TorchInductor, frozen weights; the shards' last batches are padded (9 images in
    batches of 3 by shards of 4: 3 + 1 rows)."""
    out = tmp_path / "emb"
    args = embed_args(tiny_model, out, *captions_args(messy_pairs), "embed.shard_size=4")
    args.append(f"embed.compile={str(compiled).lower()}")
    assert main([*args, "data.max_skipped_fraction=0.5"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["units"] == 4  # 13 records in shards of 4
    # the SVG, zero-byte and truncated files, and the picture with a blank caption
    expected = {"unsupported_image_format": 1, "zero_byte_image": 1}
    expected |= {"truncated_image": 1, "empty_text": 1}
    assert manifest["skipped"] == expected
    assert manifest["records_read"] == 13 and manifest["rows"] == 9
    rows, arrays = read_folder(out)
    good = [f for f, _, reason in sample_data.messy_files(10)[:9] if reason is None]
    assert [r["key"] for r in rows] == [f"images/{f}" for f in good]
    assert all(Path(r["path"]) == messy_pairs / r["key"] for r in rows)
    assert [r["captions"] for r in rows] == [[sample_data.captions_of(i)[0]] for i in range(9)]
    assert arrays["image"].dtype == np.float16 and arrays["image"].shape == (9, 128)
    assert arrays["text"].shape == (9, 128)
    for kind, want in reference(tiny_model, rows).items():
        got = torch.from_numpy(arrays[kind].astype(np.float32))
        torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


def test_too_many_bad_records_stop_with_one_line_after_the_manifest(
    tiny_model, messy_pairs, tmp_path, capsys
):
    out = tmp_path / "emb"
    assert main(embed_args(tiny_model, out, *captions_args(messy_pairs))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 4 of 13 records (30.8%) were skipped as bad")
    assert "raise data.max_skipped_fraction" in err[-1]
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_webdataset_shards_one_output_shard_each_with_metadata(tiny_model, wds, tmp_path):
    out = tmp_path / "emb"
    source = ["data.source.type=webdataset", f"data.source.shards=[{wds}]"]
    assert main(embed_args(tiny_model, out, *source, "embed.modality=image")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units"] == WDS_SHARDS and manifest["fields"] == ["image"]
    assert manifest["skipped"] == {"shard_unreadable": 1}  # the shard cut short
    rows, arrays = read_folder(out)
    full = (WDS_SHARDS - 1) * WDS_PER_SHARD
    assert [r["key"] for r in rows] == [f"{i // 3:03d}{i % 3:03d}" for i in range(full + 1)]
    assert set(arrays) == {"image"} and len(arrays["image"]) == full + 1
    meta = json.loads(rows[4]["metadata"])
    offset, size = meta.pop("image_range")  # where its JPEG lies in the shard
    assert meta == {"id": 4, "photographer": "p1", "shard": str(wds / "part-001.tar")}
    assert (wds / "part-001.tar").read_bytes()[offset : offset + size][:2] == b"\xff\xd8"
    assert rows[4]["caption"] == sample_data.captions_of(4)[0]
    assert rows[4]["path"] is None  # inside a tar: the shard is in the metadata


def test_class_folder_embeds_images_with_their_class(tiny_model, tmp_path):
    folder = sample_data.messy_class_folder(tmp_path / "classes")
    out = tmp_path / "emb"
    source = ["data.source.type=image_folder", f"data.source.path={folder}"]
    assert main(embed_args(tiny_model, out, *source, "data.max_skipped_fraction=0.5")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fields"] == ["image"] and manifest["settings"]["modality"] == "image"
    assert manifest["skipped"] == {
        "truncated_image": 1,
        "unsupported_image_format": 1,
        "zero_byte_image": 1,
    }
    rows, arrays = read_folder(out)
    assert len(rows) == 12 and arrays["image"].shape == (12, 128) and set(arrays) == {"image"}
    classes = sorted({p.parent.name for p in folder.rglob("*.*")})
    for row in rows:
        assert Path(row["path"]) == folder / row["key"] and row["captions"] == []
        assert json.loads(row["metadata"]) == {"label": classes.index(row["key"].split("/")[0])}


def test_crashed_run_resumes_and_embeds_every_record_once(
    tiny_model, messy_pairs, tmp_path, monkeypatch
):
    from flava.collection import layout

    args = [*captions_args(messy_pairs), "data.max_skipped_fraction=0.5", "embed.shard_size=2"]
    whole = tmp_path / "whole"
    assert main(embed_args(tiny_model, whole, *args)) == 0
    real, calls = layout.write_shard, []

    def crash_on_the_fourth(folder, unit, rows):
        calls.append(unit)
        if len(calls) == 4:
            raise KeyboardInterrupt  # a kill between two shards' writes
        real(folder, unit, rows)

    monkeypatch.setattr(layout, "write_shard", crash_on_the_fourth)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        main(embed_args(tiny_model, out, *args))
    assert layout.written_units(out) == [0, 1, 2]
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    monkeypatch.setattr(layout, "write_shard", real)
    assert main(embed_args(tiny_model, out, *args)) == 0
    (rows, arrays), (want_rows, want) = read_folder(out), read_folder(whole)
    assert rows == want_rows and len({r["key"] for r in rows}) == len(rows) == 9
    for kind in want:
        np.testing.assert_array_equal(arrays[kind], want[kind])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records_read"] == 13 and sum(manifest["skipped"].values()) == 4


def test_a_folder_of_other_settings_or_files_is_refused(tiny_model, messy_pairs, tmp_path, capsys):
    out = tmp_path / "emb"
    args = embed_args(tiny_model, out, *captions_args(messy_pairs), "data.max_skipped_fraction=1")
    assert main(args) == 0
    assert main([*args, "embed.normalize=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out=") and "(normalized: true there, false now)" in err
    assert len(err.splitlines()) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main([*args, f"out={tmp_path / 'other'}"]) == 2
    assert "is not empty and holds no manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "out=None is invalid: give the output folder"),
        (["out=x", "embed.shard_size=0"], "embed.shard_size=0 is invalid: must be >= 1"),
        (
            ["out=x", "embed.runtime=onnx", "embed.onnx_dir=x", "embed.compile=true"],
            "embed.compile=True is invalid: compiles the PyTorch encoders",
        ),
        (["out=x", "data.source.type=captions", "data.source.shards=[a.tar]"], "`shards` is not"),
        (["out=x", "data.source.type=text_files", "data.source.path=/nowhere"], "not found"),
        (["out=x", "embed.modality=image", "data.source.type=text_files"], "holds only texts"),
    ],
)
def test_bad_settings_fail_in_one_line(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "data.source.type=text_files" in extra and "embed.modality=image" in extra:
        sample_data.text_files(tmp_path / "corpus")
        extra = [*extra, f"data.source.path={tmp_path / 'corpus'}"]
    args = ["model.preset=tiny", *FAST, *extra] if extra else ["out=", *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
