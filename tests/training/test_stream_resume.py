"""Streamed tar shards under 2 processes x 2 loader workers, bad records planted unevenly: a run
killed with SIGKILL resumes bit for bit, and a resume at another process count reads every record
of the epoch exactly once (audited through datasets.log_keys)."""

from __future__ import annotations

import io
import logging
import shutil
from collections import Counter
from pathlib import Path

import fsspec
import pytest
import torch

from flava.checkpoints import from_pretrained
from flava.model import FlavaForPreTraining
from flava.train import main

from ..data import sample_data
from .launch import killed_when, run_plan
from .test_train import EVERY_STEP, SMALL

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SHARDS, PER_SHARD = 8, 6
BAD = {0: 3, 3: 2, 6: 1}  # shard -> truncated images at its start: uneven across readers


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, set[str]]:
    root = tmp_path_factory.mktemp("shards")
    good = set()
    for s in range(SHARDS):
        members = []
        for i in range(PER_SHARD):
            key = f"s{s}-{i}"
            out = io.BytesIO()
            sample_data.picture(["coffee", "astronaut", "chelsea"][i % 3], "RGB", 40).save(
                out, format="PNG"
            )
            image = out.getvalue()[:200] if i < BAD.get(s, 0) else out.getvalue()
            members += [(f"{key}.png", image), (f"{key}.txt", f"a photo number {s} {i}".encode())]
            if i >= BAD.get(s, 0):
                good.add(key)
        sample_data.tar_file(root / f"pairs-{s:03d}.tar", members)
    return root, good


def _args(run: Path, root: Path, steps: int, *extra: str) -> list[str]:
    return [
        *SMALL,
        f"training.run_dir={run}",
        f"training.lightning.max_steps={steps}",
        "training.batch_size=2",
        "training.num_workers=2",
        "training.lightning.limit_val_batches=0",
        "training.evaluation.enabled=false",
        "datasets.selected=[vl]",
        f"datasets.vl.train=[{{type: webdataset, shards: [{root}], shuffle_buffer: 4}}]",
        "datasets.max_skipped_fraction=1",
        "datasets.log_keys=true",
        "model.kmeans_images=8",
        *extra,
    ]


DDP = ["training.lightning.strategy=ddp", "training.lightning.devices=2"]


def _train(args: list[str]) -> str:
    """Train one process to the end, here in the test's process (a start-up of its own would
    cost more than its steps); what it logged."""
    err, logger = io.StringIO(), logging.getLogger("flava")
    handler, level = logging.StreamHandler(err), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert main(args) == 0, err.getvalue()[-3000:]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return err.getvalue()


def _killed(args: list[str], run: Path, step: int) -> Path:
    """Start a 2-process run, SIGKILL it (all its processes) once a checkpoint of `step` or
    later exists."""
    folder = run / "checkpoints"

    def ready() -> bool:
        found = [p.stem.partition("=")[2] for p in folder.glob("flava-step=*.ckpt")]
        return (folder / "last.ckpt").exists() and any(
            s.isdigit() and int(s) >= step for s in found
        )

    killed_when(2, "-m", "flava.train", *args, *DDP, ready=ready, log=run.parent / "killed.log")
    return folder / "last.ckpt"


def _keys(run: str | Path, before: int | None = None) -> list[tuple[str, str]]:
    """(key, epoch) of every sample a run's processes logged, of batches before `before`; `run`
    a folder or a URL (a fresh filesystem: other processes write there too)."""
    fs, root = fsspec.core.url_to_fs(str(run), skip_instance_cache=True, use_listings_cache=False)
    out = []
    for path in sorted(fs.glob(f"{root}/samples/rank-*.tsv")):
        for line in fs.cat_file(path).decode().splitlines():
            index, _, key, epoch = line.split("\t")
            if before is None or int(index) < before:
                out.append((key, epoch))
    return out


def _audit(first: str | Path, start: int, second: str | Path, good: set[str]) -> None:
    """Epoch 0 of a run split in two: every good record once, no bad one, none twice."""
    read = [k for k, e in _keys(first, start) + _keys(second) if e == "0"]
    twice = [k for k, n in Counter(read).items() if n > 1]
    assert not twice, f"read twice in epoch 0: {twice}"
    assert set(read) == good, f"missing: {sorted(good - set(read))}"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return from_pretrained(FlavaForPreTraining, run / "model").state_dict()


def test_two_processes_two_workers_resume_exactly_and_elastically(shards, tmp_path):
    root, good = shards
    # SIGKILL after a periodic checkpoint (one launch), resumed later by 2 and by 1 process
    run = tmp_path / "killed"
    killed = _killed(_args(run, root, 8, EVERY_STEP), run, 4)
    last = shutil.copy(killed, tmp_path / "killed.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=False)
    start = state["PretrainingData"]["start_batch"]
    assert 3 <= start < 8 and len(state["PretrainingData"]["streams"]) == 4  # 2 ranks x 2 workers
    single = tmp_path / "single"  # a 1-process run whose checkpoint 2 processes resume
    _train(_args(single, root, 5))
    # one launch, in order: the run never killed, the killed run resumed, the 1-process
    # checkpoint resumed by 2 processes
    straight, two = tmp_path / "straight", tmp_path / "two"
    from_single = f"training.lightning_load_from_checkpoint={single / 'checkpoints' / 'last.ckpt'}"
    plan = [
        _args(straight, root, 8, *DDP),
        _args(run, root, 8, f"training.lightning_load_from_checkpoint={last}", *DDP),
        _args(two, root, 5 + 15, from_single, *DDP),
    ]
    run_plan(2, [{"args": args} for args in plan], tmp_path / "plan")
    # the killed run resumed with 2 processes: the same weights as the straight run, bit for bit
    weights, reference = _weights(run), _weights(straight)
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key
    _audit(single, 5, two, good)
    # the killed run's checkpoint resumed by 1 process: the epoch goes on, each record once
    one = tmp_path / "one"
    resumed = _train(
        _args(one, root, start + 30, f"training.lightning_load_from_checkpoint={last}")
    )
    assert "resuming 1 process(es) x 2 reader(s) from a checkpoint of 2 x 2" in resumed
    _audit(run, start, one, good)


def test_resampled_shards_resume_to_the_same_weights(shards, tmp_path):
    """`resampled: true` (pmd.yaml's shard sets) continues its draws exactly after a resume."""
    root, _ = shards
    resampled = f"datasets.vl.train=[{{type: webdataset, shards: [{root}], resampled: true}}]"
    straight, part = tmp_path / "straight", tmp_path / "part"
    _train([*_args(straight, root, 6), resampled])
    _train([*_args(part, root, 3), resampled])
    last = part / "checkpoints" / "last.ckpt"
    _train([*_args(part, root, 6), resampled, f"training.lightning_load_from_checkpoint={last}"])
    weights, reference = _weights(part), _weights(straight)
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key
