"""Embedding under torchrun, killed with SIGKILL mid-shard and resumed at another process
count (2 -> 3 -> 2 on webdataset shards, 3 -> 2 on a random-access source): every record ends
embedded exactly once (audited by key), with the embeddings one process gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flava.collection import layout
from flava.embed import main

from ..data import sample_data
from ..training.launch import torchrun
from .conftest import wds_members
from .test_embed import embed_args

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SHARDS = 10
DRIVER = str(Path(__file__).with_name("embed_killed.py"))


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many_shards")
    for s in range(SHARDS):
        sample_data.tar_file(folder / f"part-{s:03d}.tar", wds_members(s))
    return folder


def launch(nproc: int, args: list[str], kill_after: int | None) -> int:
    """One torchrun launch of the driver; its exit status."""
    os.environ["FLAVA_TEST_KILL_AFTER"] = str(-1 if kill_after is None else kill_after)
    try:
        done = torchrun(nproc, DRIVER, *args, timeout=300, check=kill_after is None)
    finally:
        del os.environ["FLAVA_TEST_KILL_AFTER"]
    return done.returncode


def audit(out: Path, reference: Path) -> None:
    """Every record once, each shard's arrays as long as its table, the embeddings of one
    process (to float16 rounding)."""
    rows, want = pq.read_table(out / "table").to_pylist(), pq.read_table(reference / "table")
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys) and keys == want.column("key").to_pylist()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == len(keys)
    for kind in manifest["fields"]:
        for unit in layout.written_units(out):
            rows_of = layout.read_table(out, layout.shard_name(unit)).num_rows
            assert len(layout.read_array(out, layout.shard_name(unit), kind)) == rows_of
        got = np.concatenate([np.load(p) for p in sorted((out / kind).glob("*.npy"))])
        ref = np.concatenate([np.load(p) for p in sorted((reference / kind).glob("*.npy"))])
        np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), atol=2e-3)


def orphans(out: Path) -> list[str]:
    """Arrays written without their table (a shard killed mid-write)."""
    tables = {p.stem for p in (out / "table").glob("*.parquet")}
    return [p.name for p in (out / "image").glob("*.npy") if p.stem not in tables]


def test_webdataset_killed_twice_resumes_at_other_counts(tiny_model, many_shards, tmp_path):
    source = ["data.source.type=webdataset", f"data.source.shards=[{many_shards}]"]
    reference = tmp_path / "reference"
    assert main(embed_args(tiny_model, reference, *source)) == 0
    out = tmp_path / "emb"
    args = embed_args(tiny_model, out, *source, "embed.num_workers=0")
    assert launch(2, args, kill_after=2) != 0
    first = layout.written_units(out)
    assert 2 <= len(first) <= 4 and orphans(out)
    assert launch(3, args, kill_after=1) != 0
    assert len(first) < len(layout.written_units(out)) < SHARDS
    assert launch(2, args, kill_after=None) == 0
    audit(out, reference)
    assert json.loads((out / "manifest.json").read_text())["records_read"] == SHARDS * 3


def test_random_access_source_killed_resumes_with_fewer_processes(tiny_model, tmp_path):
    source = ["data.source.type=embedded", "data.source.size=30", "embed.shard_size=3"]
    reference = tmp_path / "reference"
    assert main(embed_args(tiny_model, reference, *source)) == 0
    out = tmp_path / "emb"
    args = embed_args(tiny_model, out, *source, "embed.num_workers=0")
    assert launch(3, args, kill_after=1) != 0
    assert 1 <= len(layout.written_units(out)) <= 3
    assert launch(2, args, kill_after=None) == 0
    audit(out, reference)
    assert sorted(r["key"] for r in pq.read_table(out / "table").to_pylist()) == sorted(
        str(i) for i in range(30)
    )
