"""A bad record's reason is logged once per run, on rank 0, whatever the processes, loader
workers, shards and epochs; after that it is only counted (`flava.data.sources.skips`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ..data import sample_data
from .launch import torchrun
from .test_train import SMALL

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SHARDS, PER_SHARD = 4, 6
TRUNCATED = {0: 2, 2: 1}  # shard -> truncated images at its start
EMPTY_TEXT = {1: 1, 3: 2}  # shard -> whitespace-only captions at its end


def write_shards(root: Path) -> None:
    """Tar shards of image-text pairs with truncated images and empty captions in them."""
    for s in range(SHARDS):
        members = []
        for i in range(PER_SHARD):
            out = io.BytesIO()
            sample_data.picture(["coffee", "astronaut"][i % 2], "RGB", 40).save(out, format="PNG")
            image = out.getvalue()[:200] if i < TRUNCATED.get(s, 0) else out.getvalue()
            text = "   " if i >= PER_SHARD - EMPTY_TEXT.get(s, 0) else f"a photo {s} {i}"
            members += [(f"s{s}-{i}.png", image), (f"s{s}-{i}.txt", text.encode())]
        sample_data.tar_file(root / f"pairs-{s:03d}.tar", members)


def test_each_reason_is_logged_once_over_two_processes_two_workers_and_epochs(tmp_path):
    root, run = tmp_path / "shards", tmp_path / "run"
    root.mkdir()
    write_shards(root)
    args = [
        *SMALL,
        f"training.run_dir={run}",
        "training.lightning.max_steps=20",  # 20 x 2 x 2 samples: about 5 epochs of the shards
        "training.batch_size=2",
        "training.num_workers=2",
        "training.lightning.limit_val_batches=0",
        "training.evaluation.enabled=false",
        "training.lightning.strategy=ddp",
        "training.lightning.devices=2",
        "datasets.selected=[vl]",
        f"datasets.vl.train=[{{type: webdataset, shards: [{root}], shuffle_buffer: 4}}]",
        "datasets.max_skipped_fraction=1",
        "model.kmeans_images=8",
    ]
    done = torchrun(2, "-m", "flava.train", *args)
    lines = [
        line for line in (done.stdout + done.stderr).splitlines() if "skips are counted" in line
    ]
    reasons = sorted(line.split("(further ")[1].split()[0] for line in lines)
    assert reasons == ["empty_text", "truncated_image"], lines
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = 3  # at least, per reader: every bad record is met, and counted, each time
    assert metrics["data/skipped/truncated_image"] >= epochs * sum(TRUNCATED.values())
    assert metrics["data/skipped/empty_text"] >= epochs * sum(EMPTY_TEXT.values())
