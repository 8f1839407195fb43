"""Where a webdataset sample's image lies in its tar shard (`Sample.image_range`): recorded for
an uncompressed tar only, and read back alone (`read_member_at`) from a local file, an http(s)
server that answers Range requests and S3, with the tar header in front checked: another
member there, a long name's extra header, a server without ranges -> None (the caller scans)."""

from __future__ import annotations

import gzip
import http.server
import threading
from pathlib import Path

import pytest

from flava.data import sources

from . import sample_data

MEMBERS = [
    ("000000.jpg", b"\xff\xd8 not really a jpeg " * 40),
    ("000000.txt", b"a first caption"),
    ("000001.txt", b"a caption before its image"),
    ("000001.png", b"\x89PNG pretend " * 7),
    ("000002.json", b'{"caption": "no image here"}'),
]


def read_all(url: str) -> list[sources.Sample]:
    return list(sources.TarShards([url], shuffle_buffer=0).shard_samples(0))


@pytest.fixture
def shard(tmp_path) -> Path:
    return sample_data.tar_file(tmp_path / "part-000.tar", MEMBERS)


def test_an_uncompressed_shard_records_where_each_image_lies(shard):
    samples = read_all(str(shard))
    assert [s.key for s in samples] == ["000000", "000001", "000002"]
    whole = shard.read_bytes()
    for sample in samples[:2]:
        offset, size = sample.image_range
        assert whole[offset : offset + size] == sample.image
        assert sources.read_member_at(str(shard), sample.key, offset, size) == sample.image
    assert samples[2].image is None and samples[2].image_range is None


def test_a_range_holding_another_member_is_refused(shard):
    first, second, _ = read_all(str(shard))
    at = str(shard)
    assert sources.read_member_at(at, "000001", *first.image_range) is None  # another key
    offset, size = first.image_range
    caption = (offset + (size + 511) // 512 * 512 + 512, 15)
    assert shard.read_bytes()[caption[0] :][:15] == b"a first caption"
    assert sources.read_member_at(at, "000000", *caption) is None  # its caption, not an image
    assert sources.read_member_at(at, "000000", first.image_range[0], 3) is None  # another size
    assert sources.read_member_at(at, "000001", second.image_range[0] + 512, 10) is None
    assert sources.read_member_at(at, "000000", 0, 10) is None
    assert sources.read_member_at(str(shard.parent / "gone.tar"), *_at(first)) is None


def _at(sample: sources.Sample) -> tuple[str, int, int]:
    return sample.key, *sample.image_range


def test_a_gzipped_shard_records_no_range(shard):
    zipped = shard.with_suffix(".tar.gz")
    zipped.write_bytes(gzip.compress(shard.read_bytes()))
    samples = read_all(str(zipped))
    assert [s.key for s in samples] == ["000000", "000001", "000002"]
    assert all(s.image_range is None for s in samples) and samples[0].image == MEMBERS[0][1]


def test_a_long_member_name_is_recorded_but_not_trusted(tmp_path):
    key = "a-folder-with-a-long-name/" * 5 + "000000"
    path = sample_data.tar_file(tmp_path / "long.tar", [(f"{key}.jpg", MEMBERS[0][1])])
    (sample,) = read_all(str(path))
    assert sample.key == key and sample.image_range is not None
    assert sources.read_member_at(str(path), key, *sample.image_range) is None  # a pax header


class _Ranged(http.server.SimpleHTTPRequestHandler):
    """Files of a folder, answering `Range: bytes=A-B` with 206 when `ranges` is set."""

    ranges = True

    def do_GET(self):
        wanted = self.headers.get("Range")
        if not (self.ranges and wanted):
            return super().do_GET()
        body = Path(self.translate_path(self.path)).read_bytes()
        start, end = (int(v) for v in wanted.split("=", 1)[1].split("-"))
        part = body[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("ranges", [True, False], ids=["ranges", "no ranges"])
def test_http_ranges_and_a_server_without_them(shard, ranges, monkeypatch):
    first = read_all(str(shard))[0]
    monkeypatch.setattr(_Ranged, "ranges", ranges)
    handler = lambda *a, **k: _Ranged(*a, directory=str(shard.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{shard.name}"
        got = sources.read_member_at(url, *_at(first))
    finally:
        server.shutdown()
    assert got == (first.image if ranges else None)
    assert sources.read_member_at(f"pipe:cat {shard}", *_at(first)) is None


def test_a_range_of_a_shard_on_s3(store, shard):
    from ..s3_store import filesystem

    filesystem().put(str(shard), f"{store.bucket}/wds/{shard.name}")
    url = f"s3://{store.bucket}/wds/{shard.name}"
    first, second, _ = read_all(url)
    assert first.image_range == read_all(str(shard))[0].image_range
    assert sources.read_member_at(url, *_at(second)) == MEMBERS[3][1]
    assert sources.read_member_at(url, "000001", *first.image_range) is None
