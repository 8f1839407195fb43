"""A run directory on a real S3 server (moto behind a fault proxy, tests/s3_store.py) that fails
under the run: a checkpoint upload cut halfway never replaces the last good checkpoint and the run
ends in one line naming the copy it kept; the server restarted in the middle of a 2-process run
(shards and checkpoints on it) loses nothing and reads every record once; a store so slow that
rank 0's uploads outlast the process group's timeout holds no rank past it."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import pytest
import torch

from flava.checkpoints.run_dir import fetch
from flava.train import main

from ..s3_store import filesystem
from .launch import environment, torchrun_command
from .test_s3_runs import _audit, _remote_args, remote  # noqa: F401  (remote: a fixture)
from .test_stream_resume import DDP, shards  # noqa: F401  (shards: a fixture)
from .test_train import SMALL

pytestmark = pytest.mark.slow

FAST_RETRIES = ["training.upload_retries=1", "training.upload_backoff=0.1"]
QUICK = ["training.evaluation.enabled=false", "training.lightning.limit_val_batches=0"]


def _step(url: str) -> int:
    return int(torch.load(fetch(url), map_location="cpu", weights_only=False)["global_step"])


def test_a_checkpoint_upload_cut_halfway_keeps_the_last_good_one(store, capsys):
    run = f"s3://{store.bucket}/run"
    # every upload of last.ckpt after the first is reset in the middle of its second part
    part_2 = r"/run/checkpoints/last\.ckpt\?.*partNumber=2(&|$)"
    store.fault("PUT", part_2, "reset_upload", times=-1, skip=1)
    argv = [
        *SMALL,
        f"training.run_dir={run}",
        "training.lightning.max_steps=4",
        *FAST_RETRIES,
        *QUICK,
    ]
    every = "training.lightning_checkpoint.every_n_train_steps=2"
    assert main([*argv, every, "training.lightning_checkpoint.save_top_k=-1"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err  # one line
    match = re.search(r"upload of (\S+) failed after 2 tries .*; this one stays at (\S+)$", err[0])
    assert match and match.group(1) == f"{run}/checkpoints/last.ckpt", err[0]
    assert _step(f"{run}/checkpoints/last.ckpt") == 2  # the last good one, whole
    kept = torch.load(match.group(2), map_location="cpu", weights_only=False)
    assert kept["global_step"] == 4  # nothing written is lost: the newest one stayed here
    fs = filesystem()
    assert _step(f"{run}/checkpoints/flava-step=4.ckpt") == 4
    assert fs.exists(f"{run}/model/model.safetensors")
    assert json.loads(fs.cat(f"{run}/metrics.json"))["steps"] == 4


def test_the_server_restarted_during_a_2_process_run(remote, store, tmp_path):  # noqa: F811
    shards_url, good = remote
    run = f"s3://{store.bucket}/restarted"
    every = "training.lightning_checkpoint.every_n_train_steps=4"
    args = _remote_args(run, shards_url, 12, every, *DDP, "training.upload_backoff=0.5")
    env = environment()
    env.pop("AWS_MAX_ATTEMPTS")  # botocore's own retries as a user has them
    log = tmp_path / "run.log"
    restarts: list[tuple[bool, int]] = []  # (the run still going, requests seen) at the restart

    def restart_at_first_checkpoint(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 300
        while not store.requests(path="/restarted/checkpoints/") and time.monotonic() < deadline:
            time.sleep(0.05)
        restarts.append((proc.poll() is None, len(store.requests())))
        store.restart(downtime=2.0)  # in the middle of the first checkpoint's upload

    with log.open("w") as out:
        proc = subprocess.Popen(
            torchrun_command(2, "-m", "flava.train", *args), env=env, stderr=out
        )
        watcher = threading.Thread(target=restart_at_first_checkpoint, args=(proc,))
        watcher.start()
        code = proc.wait(timeout=600)
    watcher.join()
    assert code == 0, log.read_text()[-3000:]
    ((going, seen),) = restarts
    assert going and len(store.requests()) > seen  # restarted mid-run; the run went on after it
    _audit(run, 0, run, good)  # epoch 0: every good record once, none lost to the restart
    assert _step(f"{run}/checkpoints/last.ckpt") == 12
    assert filesystem().exists(f"{run}/model/model.safetensors")


def test_no_rank_times_out_while_rank_0_uploads_to_a_slow_store(store, tmp_path):
    """Uploads throttled so that rank 0's last checkpoint and model/ take longer than the process
    group's timeout (8 s): the other process waits for them up to training.upload_wait."""
    run = f"s3://{store.bucket}/slow"
    args = [
        *SMALL,
        f"training.run_dir={run}",
        "training.lightning.max_steps=2",
        *QUICK,
        "training.process_group_timeout=8",
        "training.upload_wait=600",
        *DDP,
    ]
    store.throttle(12e6)  # bytes/s: last.ckpt (~170 MB) alone takes ~14 s
    log = tmp_path / "run.log"
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            torchrun_command(2, "-m", "flava.train", *args), env=environment(), stderr=out
        )
        code = proc.wait(timeout=600)
    assert code == 0, log.read_text()[-3000:]
    uploads = [r for r in store.requests() if r.method in ("PUT", "POST") and "/slow/" in r.path]
    assert time.monotonic() - start > 8 + 14  # the store really was slower than the timeout
    assert uploads and filesystem().exists(f"{run}/model/model.safetensors")
    assert _step(f"{run}/checkpoints/last.ckpt") == 2
