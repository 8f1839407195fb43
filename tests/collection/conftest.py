"""Fixtures of the collection tests: a saved tiny model, the held-out real folders (PNG modes,
SVG, zero-byte and truncated files, captions in a `text` field) and webdataset shards with
JSON metadata, one of them cut short."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from ..data import sample_data

WDS_SHARDS, WDS_PER_SHARD = 4, 3


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A seeded tiny FlavaModel saved with save_pretrained (read by model.pretrained_model_key)."""
    from flava import save_pretrained
    from flava.model import FlavaModel, preset

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    save_pretrained(FlavaModel(preset("tiny")), folder)
    return folder


@pytest.fixture(scope="session")
def messy_pairs(tmp_path_factory) -> Path:
    """10 photographs in RGB / RGBA / P / L / I;16 (the last with a blank caption), an SVG, a
    zero-byte PNG and a truncated PNG, captioned in captions.jsonl's `text` field."""
    return sample_data.messy_captions_folder(tmp_path_factory.mktemp("messy_pairs"))


def wds_members(shard: int) -> list[tuple[str, bytes]]:
    """The members of webdataset shard `shard`: JPEG, caption and JSON metadata per sample."""
    members = []
    for j in range(WDS_PER_SHARD):
        i = shard * WDS_PER_SHARD + j
        name, image, _, _ = sample_data.pictures(i + 1)[i]
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG")
        key = f"{shard:03d}{j:03d}"
        meta = {"id": i, "photographer": f"p{i % 3}", "caption": sample_data.captions_of(i)[0]}
        members += [(f"{key}.jpg", buffer.getvalue()), (f"{key}.json", json.dumps(meta).encode())]
    return members


@pytest.fixture(scope="session")
def wds(tmp_path_factory) -> Path:
    """WDS_SHARDS shards of WDS_PER_SHARD samples; the last one cut halfway through its second
    sample's image (its first sample is read, then the shard breaks off)."""
    folder = tmp_path_factory.mktemp("wds")
    for s in range(WDS_SHARDS):
        path = sample_data.tar_file(folder / f"part-{s:03d}.tar", wds_members(s))
    with tarfile.open(path) as tar:
        second = tar.getmembers()[2]
    path.write_bytes(path.read_bytes()[: second.offset_data + second.size // 2])
    return folder
