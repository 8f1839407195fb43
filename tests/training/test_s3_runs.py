"""Runs on a real S3 server (moto behind a fault proxy, tests/s3_store.py): 2-process DDP
pretraining streams webdataset shards from s3:// and writes its run directory to s3://; killed
after a checkpoint, it resumes from the s3:// checkpoint with 2 processes (bit for bit the run
never killed), 1 and 3 (epoch 0 reads every good record exactly once, audited through
datasets.log_keys). Fine-tuning reads remote shards into a remote run directory and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flava.checkpoints import from_pretrained
from flava.checkpoints.run_dir import fetch
from flava.model import FlavaForPreTraining

from ..s3_store import filesystem
from .launch import killed_when, run_plan, torchrun
from .test_stream_resume import DDP, _args, _audit, _train, shards  # noqa: F401  (shards: a fixture)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture
def remote(store, shards):  # noqa: F811
    """The shards uploaded to the test's bucket: (their folder URL, the good keys)."""
    root, good = shards
    filesystem().put(f"{root}/", f"{store.bucket}/shards/", recursive=True)
    return f"s3://{store.bucket}/shards/", good


def _remote_args(run: str, shards_url: str, steps: int, *extra: str) -> list[str]:
    args = _args(run, shards_url, steps, *extra)  # type: ignore[arg-type]
    return [a for a in args if not a.startswith("datasets.vl.train=")] + [
        f"datasets.vl.train=[{{type: webdataset, shards: ['{shards_url}'], shuffle_buffer: 4, "
        "retry_backoff: 0.05}]"
    ]


def _killed(args: list[str], run: str, step: int, log: Path) -> str:
    """Start a 2-process run, SIGKILL it once the checkpoint of `step` is on the store; its URL."""
    fs = filesystem()
    target = f"{run}/checkpoints/flava-step={step}.ckpt"
    killed_when(2, "-m", "flava.train", *args, *DDP, ready=lambda: fs.exists(target), log=log)
    return target


def _weights(run: str) -> dict[str, torch.Tensor]:
    return from_pretrained(FlavaForPreTraining, fetch(f"{run}/model")).state_dict()


def test_ddp_on_s3_killed_and_resumed_at_2_1_and_3_processes(remote, store, tmp_path):
    shards_url, good = remote
    base = f"s3://{store.bucket}"
    every = "training.lightning_checkpoint.every_n_train_steps=3"
    killed_run = f"{base}/killed"
    args = _remote_args(killed_run, shards_url, 8, every)  # killed at its step 3
    killed = _killed(args, killed_run, 3, tmp_path / "killed.log")
    state = torch.load(fetch(killed), map_location="cpu", weights_only=False)
    start = state["PretrainingData"]["start_batch"]
    assert start == 3 and len(state["PretrainingData"]["streams"]) == 4  # 2 ranks x 2 workers
    # one launch: the run never killed, then the killed one resumed, both with 2 processes
    straight, resumed = f"{base}/straight", f"training.lightning_load_from_checkpoint={killed}"
    plan = [
        _remote_args(straight, shards_url, 6, *DDP),
        _remote_args(killed_run, shards_url, 6, resumed, *DDP),
    ]
    run_plan(2, [{"args": args} for args in plan], tmp_path / "plan")
    weights, reference = _weights(killed_run), _weights(straight)
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key
    # resumed by 3 processes, then by 1: each finishes epoch 0 with every record once
    three = f"{base}/three"
    args = _remote_args(three, shards_url, start + 12, resumed, *DDP[:1])
    done = torchrun(3, "-m", "flava.train", *args, "training.lightning.devices=3")
    assert "resuming 3 process(es) x 2 reader(s) from a checkpoint of 2 x 2" in done.stderr
    _audit(killed_run, start, three, good)
    one = f"{base}/one"
    said = _train(_remote_args(one, shards_url, start + 30, resumed))
    assert "resuming 1 process(es) x 2 reader(s) from a checkpoint of 2 x 2" in said
    _audit(killed_run, start, one, good)
    fs = filesystem()
    for run in (straight, killed_run, three, one):  # the whole run directory on the store
        for name in ("config.yaml", "metrics.json", "logs/metrics.csv", "model/config.json"):
            assert fs.exists(f"{run}/{name}"), f"{run}/{name}"
    assert json.loads(fs.cat(f"{one}/metrics.json"))["steps"] == start + 30


def test_finetuning_reads_s3_shards_into_s3_and_resumes(store, tmp_path):
    from flava.checkpoints import load_finetuned
    from flava.finetune import main as finetune
    from flava.write_shards import main as write_shards

    from ..data import sample_data
    from ..tasks.test_own_data import TUNE

    folder = sample_data.class_folder(tmp_path / "classes")
    assert write_shards([str(folder), str(tmp_path / "shards"), "--shard-size", "4"]) == 0
    filesystem().put(f"{tmp_path / 'shards'}/", f"{store.bucket}/shards/", recursive=True)
    base = f"s3://{store.bucket}"
    argv = [
        *TUNE,
        "data.kind=source",
        "data.source.type=webdataset",
        f"data.source.shards=['{base}/shards/']",
        "task.modality=image",
        "data.val_fraction=0.25",
        "training.lightning.val_check_interval=2",
    ]
    assert (
        finetune([*argv, f"training.run_dir={base}/straight", "training.lightning.max_steps=4"])
        == 0
    )
    assert finetune([*argv, f"training.run_dir={base}/part", "training.lightning.max_steps=2"]) == 0
    last = f"training.lightning_load_from_checkpoint={base}/part/checkpoints/last.ckpt"
    assert (
        finetune([*argv, f"training.run_dir={base}/part", "training.lightning.max_steps=4", last])
        == 0
    )
    straight, _ = load_finetuned(fetch(f"{base}/straight/model"))
    resumed, info = load_finetuned(fetch(f"{base}/part/model"))
    assert info["class_names"] == sorted({p.parent.name for p in folder.rglob("*.*")})  # manifest
    reference = straight.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, reference[key]), key
