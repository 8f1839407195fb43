"""Thumbnails of records inside webdataset shards: flava.embed writes where each image lies in
its uncompressed tar (`metadata.image_range`), and a thumbnail reads that range alone (served,
and on S3); a gzipped shard, a table without ranges and a shard written again after embedding
(the range holding another member, or the record gone) are read by scanning the shard, and
never show another record's image."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flava.collection import thumbnails

from .conftest import WDS_PER_SHARD, wds_members
from .serving import call, serving, wds_index
from .test_embed import read_folder
from .test_serve import get_json, text_url


@pytest.fixture(scope="module")
def built(tiny_model, wds, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The webdataset shards (one cut short) embedded by image and indexed; the table's rows."""
    root = tmp_path_factory.mktemp("thumbs")
    folder = wds_index(tiny_model, wds, root)
    return folder, read_folder(root / "emb")[0]


def own_jpeg(key: str) -> bytes:
    """The JPEG a fixture record was written with."""
    return dict(wds_members(int(key[:3])))[f"{key}.jpg"]


def assert_own_image(image: Image.Image | None, key: str) -> None:
    assert image is not None, key
    own = Image.open(io.BytesIO(own_jpeg(key)))
    assert np.array_equal(np.asarray(image), np.asarray(own)), key


def meta(row: dict) -> dict:
    return json.loads(row["metadata"])


def with_meta(row: dict, **changes: object) -> dict:
    """`row` with its metadata changed (a value None drops the field)."""
    new = {k: v for k, v in (meta(row) | changes).items() if v is not None}
    return {**row, "metadata": json.dumps(new)}


class Counted:
    """A function wrapped to count its calls."""

    def __init__(self, function) -> None:
        self.function, self.calls = function, 0

    def __call__(self, *args):
        self.calls += 1
        return self.function(*args)


def no_scan(shard: str, key: str):
    raise AssertionError(f"{shard} was scanned for {key}")


def test_embed_writes_where_each_image_lies_in_its_shard(built, wds):
    _, rows = built
    assert len(rows) == 3 * WDS_PER_SHARD + 1
    for row in rows:
        offset, size = meta(row)["image_range"]
        shard = Path(meta(row)["shard"])
        assert shard.parent == wds and row["path"] is None
        assert shard.read_bytes()[offset : offset + size] == own_jpeg(row["key"])


def test_served_thumbnails_read_the_range_alone(built, monkeypatch):
    folder, rows = built
    monkeypatch.setattr(thumbnails, "_scan_shard", no_scan)
    with serving(folder) as url:
        _, answer = get_json(text_url(url, "a picture", 20))
        assert len(answer["results"]) == len(rows)
        for result in answer["results"]:
            status, headers, body = call(url + result["thumbnail"])
            assert status == 200 and headers["x-thumbnail"] == "image", result["key"]
            got = np.asarray(Image.open(io.BytesIO(body)), dtype=np.float32)
            own = np.asarray(Image.open(io.BytesIO(own_jpeg(result["key"]))), dtype=np.float32)
            assert got.shape == own.shape and np.abs(got - own).mean() < 8


def test_a_table_without_ranges_and_a_gzipped_shard_are_scanned(built, tmp_path, monkeypatch):
    _, rows = built
    scan = Counted(thumbnails._scan_shard)
    monkeypatch.setattr(thumbnails, "_scan_shard", scan)
    for row in rows:  # an embedding folder written before ranges were recorded
        assert_own_image(thumbnails.record_image(with_meta(row, image_range=None)), row["key"])
    assert scan.calls == len(rows)
    zipped = tmp_path / "part-001.tar.gz"
    zipped.write_bytes(gzip.compress(Path(meta(rows[3])["shard"]).read_bytes()))
    monkeypatch.setattr("flava.data.sources.read_member_at", no_scan)  # never ranged
    for row in rows[3:6]:  # a range kept for a gzipped shard is not sought
        assert_own_image(thumbnails.record_image(with_meta(row, shard=str(zipped))), row["key"])
    assert scan.calls == len(rows) + 3


def rewrite(shard: Path, out: Path, drop: str | None = None) -> Path:
    """`shard`'s samples written again in reverse order after a new first member, `drop`'s
    members left out."""
    members = [m for m in wds_members(int(shard.stem[-3:])) if not m[0].startswith(f"{drop}.")]
    samples = [members[i : i + 2] for i in range(0, len(members), 2)][::-1]
    from ..data import sample_data

    first = [("__notes__.txt", b"written again")]
    return sample_data.tar_file(out, first + [m for pair in samples for m in pair])


def test_a_shard_written_again_is_scanned_never_misread(built, tmp_path, monkeypatch):
    from flava.data import sources

    _, rows = built
    ours = [r for r in rows if meta(r)["shard"].endswith("part-001.tar")]
    again = rewrite(Path(meta(ours[0])["shard"]), tmp_path / "part-001.tar")
    ranged, scan = Counted(sources.read_member_at), Counted(thumbnails._scan_shard)
    monkeypatch.setattr("flava.data.sources.read_member_at", ranged)
    monkeypatch.setattr(thumbnails, "_scan_shard", scan)
    for row in ours:
        assert_own_image(thumbnails.record_image(with_meta(row, shard=str(again))), row["key"])
    now = {s.key: s.image_range for s in sources.TarShards([str(again)]).shard_samples(0)}
    moved = [r for r in ours if tuple(meta(r)["image_range"]) != now[r["key"]]]
    assert ranged.calls == 3 and scan.calls == len(moved) >= 2  # a range still true is read
    (tmp_path / "gone").mkdir()
    gone = rewrite(Path(meta(ours[0])["shard"]), tmp_path / "gone" / "part-001.tar", "001001")
    row = with_meta(next(r for r in ours if r["key"] == "001001"), shard=str(gone))
    assert thumbnails.record_image(row) is None  # the placeholder


def test_a_shard_on_s3_is_read_by_range(built, store, monkeypatch):
    from ..s3_store import filesystem

    _, rows = built
    ours = [r for r in rows if meta(r)["shard"].endswith("part-001.tar")]
    filesystem().put(meta(ours[0])["shard"], f"{store.bucket}/wds/part-001.tar")
    monkeypatch.setattr(thumbnails, "_scan_shard", no_scan)
    url = f"s3://{store.bucket}/wds/part-001.tar"
    for row in ours:
        assert_own_image(thumbnails.record_image(with_meta(row, shard=url)), row["key"])
