"""Sources on real data: folders, captions files, text files, Hugging Face sets, tar shards;
shard splitting across processes and workers, weights, resume, offline failures."""

from __future__ import annotations

import functools
import http.server
import io
import re
import threading
import time
from collections import Counter

import numpy as np
import pytest
import torch

from flava.config import ConfigError, RunConfig, SourceConfig, load_config, validate
from flava.config.loader import from_fields
from flava.data import sources
from flava.data.mixing import MixedBatches, Stream
from flava.data.sources import build as build_source
from flava.data.streams import Layout, StreamReader
from flava.data.transforms import image_transform
from flava.data.write_shards import write
from flava.training.data import check_sources

from . import sample_data


def source_cfg(**fields):
    return from_fields(SourceConfig, fields)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    sample_data.captions_folder(root / "cap_jsonl")
    sample_data.captions_folder(root / "cap_csv", fmt="csv")
    sample_data.class_folder(root / "classes")
    sample_data.text_files(root / "texts")
    sample_data.hf_saved(root / "hf")
    docs = source_cfg(type="text_files", path=str(root / "texts"))
    text = sources.build(docs, "train")
    write(text, root / "text_shards", shard_size=3)  # 24 documents -> 8 shards
    return root


class TextsBuilder:
    """Collates the texts only (no tokenizer, no images)."""

    def __call__(self, items, kind, generator, rng):
        return {"kind": kind, "texts": [i.text for i in items]}


def test_brace_patterns_and_shard_lists(data):
    assert sources.expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert sources.expand_braces("{a,b}/x-{8..10}.tar") == [
        "a/x-8.tar",
        "a/x-9.tar",
        "a/x-10.tar",
        "b/x-8.tar",
        "b/x-9.tar",
        "b/x-10.tar",
    ]
    folder = data / "text_shards"
    listed = sources.expand_shards([str(folder)])
    assert len(listed) == 8 and listed == sorted(listed)
    assert sources.expand_shards([f"{folder}/shards-{{000000..000007}}.tar"]) == listed
    assert sources.expand_shards([f"{folder}/shards-00000[0-1].tar"]) == listed[:2]
    assert sources.expand_shards(["https://x.org/a-{0..1}.tar"]) == [
        "https://x.org/a-0.tar",
        "https://x.org/a-1.tar",
    ]
    with pytest.raises(sources.SourceError, match="shards-000008.tar not found") as info:
        sources.expand_shards([f"{folder}/shards-{{000000..000009}}.tar"])
    assert "\n" not in str(info.value)


def test_local_sources_decode_every_mode(data):
    rng = np.random.default_rng(0)
    transform = image_transform("pretrain", image_size=32)
    modes = set()
    for fmt in ("jsonl", "csv"):
        src = build_source(source_cfg(type="captions", path=str(data / f"cap_{fmt}")), "train", 32)
        assert len(src) == 16 and src.kinds == {"image", "text", "vl"}
        assert src.sample(0).texts == sample_data.captions_of(0)  # several captions kept
        drawn = {src.item(0, "vl", rng).text for _ in range(20)}
        assert drawn == set(sample_data.captions_of(0))
        for i in range(len(src)):
            item = src.item(i, "vl", rng)
            modes.add(item.image.mode)
            assert transform(item.image)["pixel_values"].shape == (3, 32, 32)
            assert item.text in sample_data.captions_of(i)
    if "I" in modes:  # older Pillow opens a 16-bit PNG as "I"
        modes.add("I;16")
    assert {"RGB", "L", "RGBA", "1", "P", "I;16", "CMYK", "LA"} <= modes
    folder = build_source(source_cfg(type="image_folder", path=str(data / "classes")), "val", 32)
    assert folder.classes == ["animals", "objects", "people", "textures"]
    assert len(folder) == 16 and folder.kinds == {"image"}
    labels = Counter(folder.item(i, "image", rng).label for i in range(len(folder)))
    assert labels == Counter({1: 6, 3: 5, 0: 3, 2: 2})
    texts = build_source(source_cfg(type="text_files", path=str(data / "texts")), "train", 32)
    docs = [texts.item(i, "text", rng).text for i in range(len(texts))]
    assert len(docs) == 24 and all(d.endswith(f"(document {i})") for i, d in enumerate(docs))


def test_huggingface_saved_dataset_and_streaming(data, tmp_path):
    rng = np.random.default_rng(0)
    base = dict(type="huggingface", path=str(data / "hf"), rename_columns=[["caption", "text"]])
    train = sources.build(source_cfg(**base, remove_columns=["extra"]), "train")
    assert len(train) == 16 and train.kinds == {"image", "text", "vl"}
    assert train.dataset.column_names == ["image", "text", "label"]
    item = train.item(1, "vl", rng)
    assert item.text == sample_data.captions_of(1)[0] and item.label is not None
    assert item.image.size[0] > 0
    val = sources.build(source_cfg(**base), "val")
    assert len(val) == 8  # the validation split
    mapped = sources.build(source_cfg(**base, split_key_mapping={"validation": "train"}), "val")
    assert len(mapped) == 16
    text_only = sources.build(
        source_cfg(type="huggingface", path=str(data / "hf"), text_columns=["caption"]), "train"
    )
    assert text_only.item(2, "text", rng).text == sample_data.captions_of(2)[0]

    stream = sources.build(source_cfg(**base, streaming=True, stream_shards=4), "train")
    assert isinstance(stream, sources.HuggingFaceStream) and stream.num_shards() == 4
    keys = [s.texts[0] for s in stream.records(range(4), "vl")]
    assert sorted(keys) == sorted(sample_data.captions_of(i)[0] for i in range(16))

    parquet = tmp_path / "parquet"
    parquet.mkdir()
    import datasets

    saved = datasets.load_from_disk(str(data / "hf"))["train"]
    for i in range(2):
        saved.shard(2, i).to_parquet(str(parquet / f"part-{i}.parquet"))
    packaged = source_cfg(
        type="huggingface",
        key="parquet",
        data_files=[str(parquet / "*.parquet")],
        streaming=True,
        rename_columns=[["caption", "text"]],
    )
    streamed = sources.build(packaged, "train")
    assert streamed.num_shards() == 2
    assert sum(1 for _ in streamed.records(range(2), "vl")) == 16
    assert streamed.item(0, "image", rng).image is not None  # preview random access


def test_unknown_types_and_missing_paths_fail_in_one_line(tmp_path):
    with pytest.raises(
        ConfigError, match="image_folder, captions, records, karpathy, text_files"
    ) as info:
        build_source(source_cfg(type="tfrecord"), "train", 32)
    assert "'tfrecord'" in str(info.value) and "\n" not in str(info.value)
    missing = tmp_path / "nowhere"
    for kind in ("image_folder", "captions", "text_files"):
        with pytest.raises(ConfigError, match=str(missing)) as info:
            build_source(source_cfg(type=kind, path=str(missing)), "train", 32)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        build_source(source_cfg(type="huggingface", path=str(missing)), "train", 32)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Hub offline mode with empty caches."""
    import datasets.config as dconfig
    from huggingface_hub import constants

    monkeypatch.setattr(dconfig, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(dconfig, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("PMD_ROOT", str(tmp_path / "no-pmd"))


def test_shipped_configs_validate_and_fail_fast_offline(offline, tmp_path):
    messages = {}
    for name, needle in (
        ("debug", "Hugging Face dataset imagenet-1k/default is not in the local cache"),
        ("pmd", f"shard {tmp_path}/no-pmd/imagenet-1k/train not found"),
    ):
        cfg = load_config([f"config=pretraining/{name}.yaml"], RunConfig, validate)
        start = time.perf_counter()
        with pytest.raises(sources.SourceError) as info:
            check_sources(cfg)
        assert time.perf_counter() - start < 5
        messages[name] = str(info.value)
        assert messages[name].startswith("datasets.image.train[0]") and needle in messages[name]
        assert "\n" not in messages[name]
    assert "hf auth login" in messages["debug"] and "path:" in messages["debug"]
    assert "write_shards" in messages["pmd"]
    cfg = load_config(["config=pretraining/debug.yaml"], RunConfig, validate)
    assert cfg.datasets.vl.val[0].split_key_mapping == {"validation": "train"}
    assert cfg.datasets.text.train[0].text_columns == ["text"]
    pmd = load_config(["config=pretraining/pmd.yaml"], RunConfig, validate)
    weights = [e.weight for e in pmd.datasets.vl.train]
    assert weights == [0.9, 1.0, 1.9, 3.1, 5.4, 4.8, 11.0, 11.6, 30.3]
    assert pmd.datasets.vl.train[0].shards == [f"{tmp_path}/no-pmd/coco/train"]


def test_gated_hint_and_uncached_dataset_offline(offline):
    cfg = source_cfg(type="huggingface", key="flava-tests/no-such-set", gated=True)
    with pytest.raises(sources.SourceError, match="flava-tests/no-such-set") as info:
        sources.check(cfg)
    assert "hf auth login" in str(info.value) and "path:" in str(info.value)


def test_mixed_batches_two_ranks_two_workers_see_each_sample_once(data):
    cfg = source_cfg(type="webdataset", shards=[str(data / "text_shards")], shuffle_buffer=5)
    everything = sorted(s.texts[0] for s in sources.build(cfg, "train").records(range(8), "text"))
    seen = []
    for rank in range(2):
        stream = {"text": Stream("text", [sources.build(cfg, "train")], [1.0])}
        ds = MixedBatches(stream, TextsBuilder(), 3, seed=7, rank=rank, world_size=2)
        for worker in range(2):
            it = ds.batches(0, 2, worker)
            seen += [t for _ in range(2) for t in next(it).tensors["texts"]]
    assert sorted(seen) == everything
    # the same with real DataLoader worker processes
    seen = []
    for rank in range(2):
        stream = {"text": Stream("text", [sources.build(cfg, "train")], [1.0])}
        ds = MixedBatches(stream, TextsBuilder(), 3, seed=7, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        for i, batch in enumerate(loader):
            seen += batch.tensors["texts"]
            if i == 3:
                break
    assert sorted(seen) == everything


def test_weights_and_exact_resume_with_iterable_sources(data):
    def streams():
        a = sources.build(
            source_cfg(type="webdataset", shards=[str(data / "text_shards")]), "train"
        )
        b = build_source(source_cfg(type="text_files", path=str(data / "texts")), "train", 32)
        return {"text": Stream("text", [a, b], [3.0, 1.0])}

    ds = MixedBatches(streams(), TextsBuilder(), 2, seed=1)
    _, picks = ds.plan(0)
    share = float((picks == 0).mean())
    assert abs(share - 0.75) < 0.05
    it = ds.batches()
    batches = [next(it) for _ in range(24)]
    full = [b.tensors["texts"] for b in batches]
    states = {}  # what a checkpoint after batch 8 holds: every reader's latest position
    for b in batches[:9]:
        states.update(b.tally.stream_states)
    resumed = MixedBatches(
        streams(), TextsBuilder(), 2, seed=1, start_batch=9, stream_states=states
    )
    it = iter(resumed)
    assert [next(it).tensors["texts"] for _ in range(15)] == full[9:]
    # two workers: each continues the stream of the batches it serves
    reference = MixedBatches(streams(), TextsBuilder(), 2, seed=1)
    r0, r1 = reference.batches(0, 2, 0), reference.batches(0, 2, 1)
    ref, states = [], {}
    for _ in range(12):
        ref += [next(r0), next(r1)]
    for b in ref[:9]:
        states.update(b.tally.stream_states)
    resumed = MixedBatches(
        streams(), TextsBuilder(), 2, seed=1, start_batch=9, stream_states=states
    )
    w0, w1 = resumed.batches(9, 2, 9), resumed.batches(9, 2, 10)
    interleaved = []
    for _ in range(7):
        interleaved += [next(w0).tensors["texts"], next(w1).tensors["texts"]]
    assert interleaved == [b.tensors["texts"] for b in ref[9:23]]


def test_shuffle_buffer_and_resampled_shards(data):
    cfg = source_cfg(type="webdataset", shards=[str(data / "text_shards")], shuffle_buffer=10)
    src = sources.build(cfg, "train")
    one = StreamReader(src, "text", 0, (1, 0), Layout(0, 1, 0, 1))
    out = [next(one).texts[0] for _ in range(24)]
    ordered = [s.texts[0] for s in src.records(range(8), "text")]
    assert sorted(out) == sorted(ordered) and out != ordered
    cfg = source_cfg(type="webdataset", shards=[str(data / "text_shards")], resampled=True)
    src = sources.build(cfg, "train")
    a = StreamReader(src, "text", 0, (1, 0), Layout(0, 2, 0, 2))
    b = StreamReader(src, "text", 0, (1, 0), Layout(1, 2, 0, 2))
    first = [next(a).texts[0] for _ in range(60)]
    second = [next(b).texts[0] for _ in range(60)]
    assert first != second and len(set(first)) > 6


def _png(mode: str) -> bytes:
    out = io.BytesIO()
    sample_data.picture("coffee", mode, 24).save(out, format="PNG")
    return out.getvalue()


def test_tar_layout_urls_and_corrupt_samples(tmp_path, caplog):
    shard = sample_data.tar_file(
        tmp_path / "mixed.tar",
        [
            ("__meta__.json", b"{}"),
            ("a/0001.png", _png("RGBA")),
            ("a/0001.json", b'{"captions": ["one", "uno"], "label": 4}'),
            ("a/0002.seg.png", _png("P")),
            ("a/0002.txt", b"two"),
            ("a/0002.cls", b"7"),
            ("a/0003.txt", b"only text"),
            ("a/0004.jpg", b"not a jpeg"),
            ("a/0004.txt", b"broken image"),
            ("a/0005.png", _png("L")),
        ],
    )
    src = sources.TarShards([str(shard)], shuffle_buffer=0)
    samples = list(src.shard_samples(0))
    assert [s.key for s in samples] == ["a/0001", "a/0002", "a/0003", "a/0004", "a/0005"]
    assert samples[0].texts == ["one", "uno"] and samples[0].label == 4
    assert samples[1].label == 7 and samples[1].texts == ["two"]
    assert [s.key for s in src.records([0], "vl")] == ["a/0001", "a/0002", "a/0004"]
    assert [s.key for s in src.records([0], "image")] == ["a/0001", "a/0002", "a/0004", "a/0005"]
    assert len([*src.records([0], "text")]) == 4
    stream = {"vl": Stream("vl", [src], [1.0])}
    ds = MixedBatches(stream, TextsBuilder(), 3, seed=0)
    batch = next(ds.batches())
    assert sorted(batch.tensors["texts"], key=len)[-1] in ("one", "uno", "two")
    assert "broken image" not in batch.tensors["texts"] and "skipping" in caplog.text
    # the same shard through pipe: and http://
    piped = sources.TarShards([f"pipe:cat {shard}"], shuffle_buffer=0)
    assert [s.key for s in piped.shard_samples(0)] == [s.key for s in samples]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mixed.tar"
        remote = sources.TarShards(sources.expand_shards([url]), shuffle_buffer=0)
        assert [s.key for s in remote.shard_samples(0)] == [s.key for s in samples]
    finally:
        server.shutdown()
        server.server_close()


def test_hub_probe_unreachable_gated_and_missing(monkeypatch, tmp_path):
    import datasets.config as dconfig
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import RepositoryNotFoundError

    monkeypatch.setattr(dconfig, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(dconfig, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    answers = {}

    def dataset_info(self, key, timeout=None, **kwargs):
        assert timeout == 5.0  # short, and a single call: no retry loop
        answer = answers[key]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)

    class Info:
        gated = "manual"

    class Missing(RepositoryNotFoundError):
        def __init__(self) -> None:
            Exception.__init__(self, "404")

    answers.update(
        {"org/down": OSError("[Errno -2] Name or service not known"), "org/gated": Info()}
    )
    answers["org/missing"] = Missing()
    for key, needle in (
        ("org/down", "cannot be reached ([Errno -2] Name or service not known)"),
        ("org/gated", "is gated and no token is set"),
        ("org/missing", "not found on the Hub"),
    ):
        with pytest.raises(sources.SourceError, match=re.escape(needle)) as info:
            sources.check(source_cfg(type="huggingface", key=key))
        assert key in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "hub-cache" / "datasets--org--down").mkdir(parents=True)
    assert sources.check_huggingface(source_cfg(type="huggingface", key="org/down")) is True


def test_url_image_column_with_dead_links(data, tmp_path, caplog):
    import datasets

    images = sorted((data / "cap_jsonl" / "images").iterdir())[:5]
    urls = [str(p) for p in images[:4]] + ["http://127.0.0.1:9/dead.jpg"]
    table = datasets.Dataset.from_dict({"image_url": urls, "caption": [f"c{i}" for i in range(5)]})
    table.save_to_disk(str(tmp_path / "urls"))
    cfg = source_cfg(
        type="huggingface",
        path=str(tmp_path / "urls"),
        split="train",
        image_column="image_url",
        rename_columns=[["caption", "text"]],
    )
    src = sources.build(cfg, "train")
    assert src.kinds == {"image", "text", "vl"}
    ds = MixedBatches({"vl": Stream("vl", [src], [1.0])}, TextsBuilder(), 5, seed=0)
    texts = next(ds.batches()).tensors["texts"]
    assert len(texts) == 5 and "c4" not in texts  # the dead link was replaced
    assert "skipping sample 4" in caplog.text


def test_an_svg_in_a_shard_and_a_spreadsheet_csv_are_counted_and_read(tmp_path):
    """An SVG member is skipped as unsupported_image_format (not dropped without a word), and a
    captions CSV saved with a UTF-8 byte-order mark keeps its first column's name."""
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>'
    members = [("a/0.svg", svg), ("a/0.txt", b"a logo"), ("a/1.png", _png("RGB"))]
    shard = sample_data.tar_file(tmp_path / "svg.tar", [*members, ("a/1.txt", b"a photo")])
    src = sources.TarShards([str(shard)], shuffle_buffer=0)
    assert [s.key for s in src.records([0], "vl")] == ["a/0", "a/1"]
    with pytest.raises(sources.BadSample) as info:
        src.decode(next(iter(src.records([0], "vl"))), "vl", np.random.default_rng(0))
    assert info.value.reason == "unsupported_image_format"
    (tmp_path / "img").mkdir()
    sample_data.picture("coffee", "RGB", 32).save(tmp_path / "img" / "x.png")
    rows = '\ufefffilename,caption\r\nimg/x.png,"a cup, of coffee"\r\n'
    (tmp_path / "captions.csv").write_bytes(rows.encode())
    cfg = source_cfg(type="captions", path=str(tmp_path), image_column="filename")
    caps = sources.build(cfg, "train")
    assert caps.sample(0).texts == ["a cup, of coffee"]
