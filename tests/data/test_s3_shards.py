"""webdataset shards on a real S3 server (moto, tests/s3_store.py) read through s3fs, with the
store failing under them: 503 SlowDown answers, a connection reset in the middle of a shard, a
shard that keeps failing. Reads resume from the byte they reached: every record once, in order."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flava.data import sources
from flava.data.sources.skips import SkipLog
from flava.data.streams import Layout, StreamReader

from . import sample_data

CHUNK = 1 << 20  # bytes per ranged read: a shard of ~2.5 MB takes three
PER_SHARD = 5


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory) -> Path:
    """Three shards of noisy 400 px PNGs (~0.5 MB each) with captions, and a manifest."""
    root = tmp_path_factory.mktemp("s3-shards")
    rng = np.random.default_rng(0)
    for s in range(3):
        members = []
        for i in range(PER_SHARD):
            pixels = rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, format="PNG", compress_level=0)
            members += [(f"s{s}-{i}.png", out.getvalue()), (f"s{s}-{i}.cls", str(i % 2).encode())]
        sample_data.tar_file(root / f"pairs-{s:03d}.tar", members)
    (root / "manifest.json").write_text('{"classes": ["even", "odd"]}')
    return root


@pytest.fixture
def bucket(store, local_shards) -> str:
    """The shards uploaded to the test's bucket; their folder URL."""
    from ..s3_store import filesystem

    filesystem().put(f"{local_shards}/", f"{store.bucket}/shards/", recursive=True)
    return f"s3://{store.bucket}/shards"


def _shards(url: str, **kwargs) -> sources.TarShards:
    return sources.TarShards(
        sources.expand_shards([url]), shuffle_buffer=0, backoff=0.01, chunk=CHUNK, **kwargs
    )


def _keys(src: sources.TarShards) -> list[str]:
    return [s.key for shard in range(src.num_shards()) for s in src.shard_samples(shard)]


def test_shards_are_listed_read_and_named_on_s3(bucket, local_shards):
    local = _shards(str(local_shards))
    by_glob = _shards(f"{bucket}/pairs-*.tar")
    by_folder, by_braces = _shards(f"{bucket}/"), _shards(f"{bucket}/pairs-{{000..002}}.tar")
    assert by_glob.urls == by_folder.urls == by_braces.urls
    assert by_glob.urls[0] == f"{bucket}/pairs-000.tar"
    assert _keys(by_glob) == _keys(local) and len(_keys(local)) == 3 * PER_SHARD
    first = next(by_glob.shard_samples(0))
    assert first.image == next(local.shard_samples(0)).image and first.label == 0
    assert sources.webdataset.manifest_classes(by_glob.urls) == ["even", "odd"]
    with pytest.raises(sources.SourceError, match="no shards at"):
        sources.expand_shards([f"{bucket}/nothing-*.tar"])


def _ranges(store, name: str) -> list[str]:
    """The byte each GET of shard `name` started at, and what the proxy answered."""
    return [
        f"{(r.range or 'bytes=0-').split('=')[1].split('-')[0]}:{r.answer}"
        for r in store.requests("GET", name)
    ]


@pytest.mark.parametrize("times", [1, 7])
def test_a_connection_reset_mid_shard_resumes_at_the_byte_reached(bucket, store, times):
    """Reset in its second ranged read: s3fs retries that range (5 tries since 2024), the reader
    reopens at the byte it reached once they are spent; neither starts the shard again."""
    reference = _keys(_shards(f"{bucket}/"))
    store.clear()
    store.fault("GET", "pairs-001.tar", "reset", times=times, skip=1)
    src = _shards(f"{bucket}/", retries=8)
    assert _keys(src) == reference  # every record once, in order
    ranges = _ranges(store, "pairs-001.tar")
    assert ranges[0] == "0:206" and ranges[1].startswith(f"{CHUNK}:reset after")
    assert all(not r.startswith("0:") for r in ranges[1:]), ranges
    assert ranges[-2] == f"{CHUNK}:206" and ranges[-1] == f"{2 * CHUNK}:206"
    assert sum(r.startswith(f"{CHUNK}:reset") for r in ranges) == times


def test_slow_down_answers_are_retried_with_backoff(bucket, store):
    reference = _keys(_shards(f"{bucket}/"))
    store.clear()
    fault = store.fault("GET", "pairs-002.tar", "slowdown", times=8)
    assert _keys(_shards(f"{bucket}/", retries=8)) == reference
    assert fault.hits == 8 and fault.times == 0


def test_a_shard_that_keeps_failing_is_skipped_and_counted(bucket, store, caplog):
    src = _shards(f"{bucket}/", retries=1)
    skips = SkipLog()
    reader = StreamReader(src, "image", 0, (0, 0), Layout(0, 1, 0, 1), skips=skips)
    # a shard whose failure shows within epoch 0 (not its last, nor the first of epoch 1)
    last, next_first = reader.plan(0)[-1].shard, reader.plan(1)[0].shard
    bad = next(s for s in range(3) if s not in (last, next_first))
    store.fault("GET", f"pairs-{bad:03d}.tar", "reset", times=-1, skip=1)
    keys, skipped = [], {}
    while True:
        record = next(reader)
        if reader.epoch > 0:
            break
        keys.append(record.key)
        skipped.update(skips.take())
    assert skipped == {"shard_unreadable": 1}
    assert sorted(k for k in keys if k.startswith(f"s{bad}-")) == [f"s{bad}-0", f"s{bad}-1"]
    assert len(keys) == len(set(keys)) == 2 * PER_SHARD + 2  # the first chunk's records, once
    assert f"pairs-{bad:03d}.tar failed after 2 samples" in caplog.text
    assert "ConnectionResetError" in caplog.text and "2 tries at byte 1048576" in caplog.text
