"""flava.embed reads webdataset shards from s3:// (a real S3 server on loopback, moto) as it
reads them from disk: the same records, in the same order, with the same embeddings."""

from __future__ import annotations

import json

import numpy as np

from flava.embed import main

from .test_embed import embed_args, read_folder


def test_shards_on_s3_embed_as_the_same_shards_on_disk(store, tiny_model, wds, tmp_path):
    from ..s3_store import filesystem

    filesystem().put(f"{wds}/", f"{store.bucket}/wds/", recursive=True)
    outs = {}
    for name, shards in (("disk", str(wds)), ("s3", f"'s3://{store.bucket}/wds/'")):
        outs[name] = tmp_path / name
        source = ["data.source.type=webdataset", f"data.source.shards=[{shards}]"]
        assert main(embed_args(tiny_model, outs[name], *source)) == 0
    (disk_rows, disk), (s3_rows, s3) = read_folder(outs["disk"]), read_folder(outs["s3"])
    assert [r["key"] for r in s3_rows] == [r["key"] for r in disk_rows]
    assert [r["caption"] for r in s3_rows] == [r["caption"] for r in disk_rows]
    assert set(s3) == set(disk) == {"image", "text"}
    for kind in disk:
        np.testing.assert_array_equal(s3[kind], disk[kind])
    manifests = [json.loads((outs[n] / "manifest.json").read_text()) for n in ("disk", "s3")]
    assert manifests[0]["skipped"] == manifests[1]["skipped"] == {"shard_unreadable": 1}
    shard = json.loads(s3_rows[4]["metadata"])["shard"]
    assert shard == f"s3://{store.bucket}/wds/part-001.tar"
