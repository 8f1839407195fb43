"""flava.filter on generated webdataset shards with planted near-duplicates and planted copies
of an evaluation set: every planted one found, nothing else dropped, the kept pairs written as
shards the pretraining config reads, the report, and exact reproducibility."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flava.embed import main as embed
from flava.filter import main as filter_main

from ..data import sample_data

DISTINCT = [i for i in range(13) if i != 5]  # under the seeded tiny model: pairwise cosine < 0.99
EVAL_COPIES = [3, 9]  # collection pictures the evaluation set holds (as PNG)
EVAL_OTHERS = [13, 15]  # evaluation pictures not in the collection


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    sample_data.pictures(16, 96)[i][1].convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(i: int) -> bytes:
    buffer = io.BytesIO()
    sample_data.pictures(16, 96)[i][1].convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _pair(key: str, image: bytes, ext: str, caption: str) -> list[tuple[str, bytes]]:
    return [(f"{key}.{ext}", image), (f"{key}.txt", caption.encode())]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(shards, evaluation folder, planted key -> reason): 3 shards of distinct pictures, three
    JPEG copies of other records (one whose key is lower than its original's), a zero-byte
    image, and an image folder holding PNG copies of two collection pictures and two others."""
    root = tmp_path_factory.mktemp("planted")
    shards, evals = root / "shards", root / "eval"
    shards.mkdir()
    members: list[list[tuple[str, bytes]]] = [[], [], []]
    for n, i in enumerate(DISTINCT):
        members[n % 3] += _pair(f"p{i:03d}", _png(i), "png", sample_data.captions_of(i)[0])
    members[1] += _pair("z002", _jpeg(2), "jpg", "a copy of picture two")
    members[2] += _pair("z007", _jpeg(7), "jpg", "a copy of picture seven")
    members[0] += _pair("a011", _jpeg(11), "jpg", "a copy with a lower key")
    members[2] += [("bad.jpg", b""), ("bad.txt", b"an empty image")]
    for s, part in enumerate(members):
        sample_data.tar_file(shards / f"part-{s:03d}.tar", part)
    (evals / "val").mkdir(parents=True)
    for i in EVAL_COPIES + EVAL_OTHERS:
        (evals / "val" / f"{i:03d}.png").write_bytes(_png(i))
    reasons = {"z002": "near_duplicate", "z007": "near_duplicate", "p011": "near_duplicate"}
    reasons |= {f"p{i:03d}": "eval_copy" for i in EVAL_COPIES}
    return shards, evals, reasons


@pytest.fixture(scope="module")
def embedded(planted, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "emb"
    args = [
        f"model.pretrained_model_key={tiny_model}",
        f"out={out}",
        "data.source.type=webdataset",
        f"data.source.shards=[{planted[0]}]",
        "embed.modality=pair",
        "embed.progress=false",
        "embed.precision=fp32",
        "data.max_skipped_fraction=1",
    ]
    assert embed(args) == 0
    return out


def _filter(embedded: Path, out: Path, *extra: str) -> dict:
    assert filter_main([f"embeddings={embedded}", f"out={out}", *extra]) == 0
    return json.loads((out / "report.json").read_text())


def _read_back(out: Path) -> list[tuple[bytes | None, list[str]]]:
    """The written shards as the pretraining config's datasets.vl.train reads them."""
    from flava.config import RunConfig, load_config
    from flava.data.sources import build

    cfg = load_config([f"datasets.vl.train=[{{type: webdataset, shards: [{out}]}}]"], RunConfig)
    source = build(cfg.datasets.vl.train[0], "train", 224)
    return [
        (s.image, list(s.texts))
        for u in range(source.num_shards())
        for _, s in source.shard_records(u, "vl")
    ]


def test_every_planted_pair_is_found_and_nothing_else_dropped(embedded, planted, tmp_path):
    shards, evals, reasons = planted
    out = tmp_path / "clean"
    eval_set = f"eval_sets=[{{type: image_folder, path: {evals}}}]"
    report = _filter(embedded, out, eval_set, "filter.duplicate_threshold=0.995",
                     "filter.eval_threshold=0.995")  # fmt: skip
    table = pq.read_table(out / "decisions.parquet").to_pylist()
    dropped = {r["key"]: r["reason"] for r in table if r["reason"] != "kept"}
    assert dropped == reasons
    assert {r["key"]: r["duplicate_of"] for r in table if r["duplicate_of"]} == {
        "z002": "p002", "z007": "p007", "p011": "a011"}  # fmt: skip
    total = len(DISTINCT) + 3
    assert report["pairs"] == total and report["kept"] == total - len(reasons)
    assert report["dropped"] == {"eval_copy": 2, "near_duplicate": 3, "low_score": 0}
    assert report["bad_records"]["at_embedding"] == {"zero_byte_image": 1}
    assert report["eval_images"] == len(EVAL_COPIES + EVAL_OTHERS)
    assert {e["key"] for e in report["examples"]["eval_copy"]} == {"p003", "p009"}
    assert all(e["duplicate_of"]["cosine"] >= 0.995 for e in report["examples"]["near_duplicate"])
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the kept pairs, images byte for byte, read through the pretraining config
    read = _read_back(out)
    assert report["written"] == len(read) == total - len(reasons)
    kept_captions = {r["key"]: r for r in table if r["reason"] == "kept"}
    assert sorted(c[0] for _, c in read) == sorted(
        pq.read_table(embedded / "table").to_pandas().set_index("key").loc[
            sorted(kept_captions)]["caption"])  # fmt: skip
    assert _png(0) in {image for image, _ in read} and _png(3) not in {i for i, _ in read}


def test_score_fraction_keeps_the_highest_scores_and_reruns_exactly(embedded, tmp_path):
    first = _filter(embedded, tmp_path / "a", "filter.keep_fraction=0.5",
                    "filter.duplicate_threshold=null")  # fmt: skip
    # the reference: cosines of the stored float16 embeddings
    keys = pq.read_table(embedded / "table").column("key").to_pylist()
    image = np.concatenate([np.load(p) for p in sorted((embedded / "image").glob("*.npy"))])
    text = np.concatenate([np.load(p) for p in sorted((embedded / "text").glob("*.npy"))])
    image, text = image.astype(np.float32), text.astype(np.float32)
    scores = (image * text).sum(1) / np.linalg.norm(image, axis=1) / np.linalg.norm(text, axis=1)
    order = sorted(range(len(keys)), key=lambda i: (-scores[i], keys[i]))
    expected = {keys[i] for i in order[: -(-len(keys) // 2)]}
    table = pq.read_table(tmp_path / "a" / "decisions.parquet").to_pylist()
    assert {r["key"] for r in table if r["reason"] == "kept"} == expected
    assert first["dropped"]["low_score"] == len(keys) - len(expected)
    assert first["lowest_kept_score"] == pytest.approx(
        min(scores[keys.index(k)] for k in expected), abs=1e-5
    )
    second = _filter(embedded, tmp_path / "b", "filter.keep_fraction=0.5",
                     "filter.duplicate_threshold=null")  # fmt: skip
    assert first["examples"] == second["examples"]
    for name in ["decisions.parquet", *first["shards"]]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["filter.keep_fraction=0"], "filter.keep_fraction"),
        (["filter.min_score=2"], "filter.min_score"),
    ],
)
def test_bad_settings_fail_in_one_line(extra, message, embedded, tmp_path, capsys):
    assert filter_main([f"embeddings={embedded}", f"out={tmp_path / 'o'}", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_an_image_only_folder_or_a_missing_one_is_refused(tiny_model, tmp_path, capsys):
    assert filter_main([f"embeddings={tmp_path / 'none'}", f"out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run flava.embed" in err


@pytest.mark.slow
def test_pretraining_trains_on_the_filtered_shards(embedded, planted, tmp_path):
    from flava.train import main as train

    from ..training.test_train import SMALL

    out = tmp_path / "kept"
    report = _filter(embedded, out, "filter.duplicate_threshold=0.995", "filter.shard_size=4")
    assert len(report["shards"]) == -(-report["written"] // 4) >= 3
    run = tmp_path / "run"
    args = [
        *SMALL,
        f"training.run_dir={run}",
        "training.lightning.max_steps=2",
        "training.lightning.limit_val_batches=0",
        "training.evaluation.enabled=false",
        "datasets.selected=[vl]",
        f"datasets.vl.train=[{{type: webdataset, shards: [{out}]}}]",
        "model.kmeans_images=8",
    ]
    assert train(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data/samples_read"] >= 8 and metrics["data/skipped_fraction"] == 0
