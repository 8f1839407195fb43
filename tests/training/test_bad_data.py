"""Bad samples: each kind is skipped and counted per reason; too many stop the run."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from flava.data import sources
from flava.data.mixing import MixedBatches, Stream
from flava.data.sources.errors import BadSample, DataError
from flava.data.sources.skips import robust_item
from flava.train import main

from ..data import sample_data
from .test_train import SMALL


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20000) -> bytes:
    """A valid PNG header declaring side x side pixels (far past PIL's bomb limit)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    sample_data.picture("coffee", "RGB", 48).save(out, format=fmt)
    return out.getvalue()


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>'
BAD_IMAGES = {
    "zero_byte_image": b"",
    "truncated_image": encoded("JPEG")[:300],
    "unsupported_image_format": SVG,
    "unreadable_image": b"these bytes are not an image at all",
    "decompression_bomb": bomb_png(),
}


@pytest.mark.parametrize("reason", sorted(BAD_IMAGES))
def test_decode_names_the_reason(reason):
    with pytest.raises(BadSample) as info:
        sources.decode_image(BAD_IMAGES[reason])
    assert info.value.reason == reason and "\n" not in str(info.value)


def test_truncated_png_dead_url_and_missing_file(tmp_path):
    for data, reason in (
        (encoded("PNG")[: len(encoded("PNG")) // 2], "truncated_image"),
        ("http://127.0.0.1:9/dead.jpg", "image_unavailable"),
        (str(tmp_path / "gone.jpg"), "image_unavailable"),
        (None, "missing_image"),
    ):
        with pytest.raises(BadSample) as info:
            sources.decode_image(data)
        assert info.value.reason == reason, data
    assert sources.decode_image(encoded("PNG")).size == (48, 32)


def test_sample_level_reasons_and_labels():
    rng = np.random.default_rng(0)
    whitespace = sources.Sample("a", image=encoded("PNG"), texts=[], empty_text=True)
    assert whitespace.decoded("image", rng).image is not None  # images need no caption
    for kind in ("vl", "text"):
        with pytest.raises(BadSample, match="whitespace") as info:
            whitespace.decoded(kind, rng)
        assert info.value.reason == "empty_text"
    with pytest.raises(BadSample) as info:
        sources.Sample("b", texts=["x"]).decoded("vl", rng)
    assert info.value.reason == "missing_image"
    # webdataset and Hugging Face rows: labels that are not integer classes are flagged
    files = {"png": encoded("PNG"), "txt": b"a cup", "cls": b"seven"}
    bad = sources.sample_from_files("k", files, ["text"])
    with pytest.raises(BadSample, match="'seven' is not an int") as info:
        bad.decoded("vl", rng)
    assert info.value.reason == "bad_label"
    for value, label in ((3, 3), ("4", 4), (5.0, 5), (np.int64(6), 6), (True, 1), (None, None)):
        good = sources.sample_from_files("k", {**files, "cls": str(value).encode()}, ["text"])
        row = sources.row_sample({"image": None, "text": "t", "label": value}, "r", _cfg())
        assert row.label == label and row.bad_label is None, value
        if value is not None and not isinstance(value, (float, bool)):
            assert good.label == int(label) and good.bad_label is None
    row = sources.row_sample({"image": None, "text": "  ", "label": 2.5}, "r", _cfg())
    assert row.bad_label == 2.5 and row.empty_text and row.problem("text") == "empty_text"
    assert sources.row_sample({"text": "ok", "label": 2.5}, "r", _cfg()).problem("text") == (
        "bad_label"
    )


def _cfg():
    from flava.config import SourceConfig

    return SourceConfig(type="huggingface")


def planted_captions(root: Path, good: int = 24) -> tuple[Path, dict[str, int]]:
    """A captions folder with `good` real images and one planted bad sample per reason."""
    sample_data.captions_folder(root, count=good)
    planted = {}
    rows = []
    for reason, data in BAD_IMAGES.items():
        (root / "images" / f"bad_{reason}.img").write_bytes(data)
        rows.append({"image": f"images/bad_{reason}.img", "caption": "a bad one"})
        planted[reason] = 1
    (root / "images" / "blank.png").write_bytes(encoded("PNG"))
    rows.append({"image": "images/blank.png", "caption": "   "})
    rows.append({"image": "images/missing.png", "caption": "a file that is not there"})
    planted.update(empty_text=1, image_unavailable=1)
    with (root / "captions.jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return root, planted


def test_every_planted_reason_is_counted_by_the_pipeline(tmp_path, caplog):
    root, planted = planted_captions(tmp_path / "caps")
    src = sources.build(_source(root), "train")
    n = len(src)
    assert n == 24 + len(planted)
    stream = {"vl": Stream("vl", [src], [1.0])}
    ds = MixedBatches(stream, _Texts(), batch_size=n, seed=0)
    batches = ds.batches()
    batch = next(batches)  # one batch = one epoch: every sample once, bad ones replaced
    assert len(batch.tensors["texts"]) == n and "a bad one" not in batch.tensors["texts"]
    for reason, count in planted.items():
        assert batch.tally.skipped.get(reason, 0) >= count, (reason, batch.tally.skipped)
    assert batch.tally.samples_read == n + sum(batch.tally.skipped.values())
    assert "[decompression_bomb]" in caplog.text

    # quiet: one line for the first skip of each reason, then counts only
    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]

    assert len(lines()) == len(batch.tally.skipped), lines()
    again = next(batches)  # the next epoch meets the same bad samples: counted, not logged
    assert sum(again.tally.skipped.values()) >= len(planted) and len(lines()) == len(
        batch.tally.skipped
    )
    # eight bad draws in a row: one clear line naming the source and the reasons
    rng = np.random.default_rng(0)

    class AllBad:
        def __len__(self) -> int:
            return 3

        def item(self, index, kind, rng):
            raise BadSample("empty_text", "empty")

    with pytest.raises(DataError, match=r"8 vl samples in a row could not be used \(empty_text\)"):
        robust_item(AllBad(), 0, "vl", rng)


def _source(root: Path):
    from flava.config import SourceConfig

    return SourceConfig(type="captions", path=str(root))


class _Texts:
    def __call__(self, items, kind, generator, rng):
        return {"kind": kind, "texts": [i.text for i in items]}


def test_stream_resume_is_exact_past_bad_records(tmp_path):
    members = []
    for i in range(40):
        bad = i % 5 == 2
        image = list(BAD_IMAGES.values())[i % len(BAD_IMAGES)] if bad else encoded("PNG")
        members += [(f"s/{i:04d}.png", image), (f"s/{i:04d}.txt", f"caption {i}".encode())]
    shard = sample_data.tar_file(tmp_path / "bad.tar", members)

    def dataset(start: int = 0, states: dict | None = None) -> MixedBatches:
        src = sources.TarShards([str(shard)], shuffle_buffer=0)
        return MixedBatches(
            {"vl": Stream("vl", [src], [1.0])},
            _Texts(),
            4,
            0,
            start_batch=start,
            stream_states=states,
        )

    full = dataset().batches()
    batches = [next(full) for _ in range(8)]
    assert sum(sum(b.tally.skipped.values()) for b in batches) >= 4
    position = batches[4].tally.stream_states  # what a checkpoint after batch 4 holds
    resumed = iter(dataset(5, position))
    assert [next(resumed).tensors["texts"] for _ in range(3)] == [
        b.tensors["texts"] for b in batches[5:]
    ]
    # without the position the stream would start over
    naive = iter(dataset(5))
    assert [next(naive).tensors["texts"] for _ in range(3)] != [
        b.tensors["texts"] for b in batches[5:]
    ]


def vl_only(root: Path, run: Path) -> list[str]:
    return [
        *SMALL,
        f"training.run_dir={run}",
        "datasets.selected=[vl]",
        f"datasets.vl.train=[{{type: captions, path: {root}}}]",
        "model.kmeans_images=8",
    ]


@pytest.mark.slow
def test_run_counts_skips_in_metrics_and_stops_past_the_threshold(tmp_path, capsys, monkeypatch):
    secret = "hf_NeverWriteThisToken0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    root, planted = planted_captions(tmp_path / "caps", good=12)
    run = tmp_path / "ok"
    assert main([*vl_only(root, run), "training.lightning.max_steps=10"]) == 0
    written = [f for f in run.rglob("*") if f.is_file()]
    assert len(written) > 5 and not [f for f in written if secret.encode() in f.read_bytes()]
    assert secret not in capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    skipped = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("data/skipped/")}
    assert set(planted) <= {k for k, v in skipped.items() if v}, skipped
    assert metrics["data/samples_read"] == 40 + sum(skipped.values())
    assert metrics["data/skipped_fraction"] == pytest.approx(
        sum(skipped.values()) / metrics["data/samples_read"]
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["flava_counters"]["samples_read"] == metrics["data/samples_read"]
    # 7 bad of 19 samples is far past a 5% threshold: one line, exit status 1, a checkpoint
    stop = tmp_path / "stop"
    args = [*vl_only(root, stop), "training.lightning.max_steps=30"]
    assert main([*args, "datasets.max_skipped_fraction=0.05"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: stopped at step 10: ") and "max_skipped_fraction=0.05" in err
    assert "decompression_bomb 1" in err or "decompression_bomb" in err
    assert (stop / "checkpoints" / "bad-data-stop.ckpt").exists()
    assert json.loads((stop / "metrics.json").read_text())["data/skipped/empty_text"] >= 1


def test_empty_dataset_and_missing_column_fail_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "captions.jsonl").write_text("")
    assert main(vl_only(empty, tmp_path / "run1")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lists no images" in err and "datasets.vl.train[0]" in err
    import datasets

    table = datasets.Dataset.from_dict({"picture": [encoded("PNG")], "words": ["x"]})
    table.save_to_disk(str(tmp_path / "hf"))
    args = [
        *SMALL,
        f"training.run_dir={tmp_path / 'run2'}",
        "datasets.selected=[vl]",
        f"datasets.vl.train=[{{type: huggingface, path: {tmp_path / 'hf'}, split: train}}]",
    ]
    capsys.readouterr()  # the save_to_disk progress bar
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "image_column='image'" in err and "picture, words" in err


def test_a_kmeans_codebook_larger_than_the_patches_fails_in_one_line(tmp_path, capsys):
    folder = sample_data.captions_folder(tmp_path / "caps", count=4)
    argv = [
        *SMALL,
        f"training.run_dir={tmp_path / 'run'}",
        "datasets.selected=[vl]",
        f"datasets.vl.train=[{{type: captions, path: {folder}}}]",
        f"datasets.vl.val=[{{type: captions, path: {folder}}}]",
        "model.kmeans_images=2",
        "model.kmeans_codes=512",
    ]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "model.kmeans_codes=512" in err[0] and "patches" in err[0]
