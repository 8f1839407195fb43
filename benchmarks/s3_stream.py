"""Shards streamed from a local S3 server against the same shards on local disk, and the time a
resume from an s3:// checkpoint takes to its first step.

    python benchmarks/s3_stream.py                      # 8 shards x 256 JPEG pairs
    python benchmarks/s3_stream.py --shards 16 --per-shard 512 --rounds 3

Needs s3fs and moto[server] (the dev extra). Starts moto's S3 server on a loopback port (no
network; clients reach it through AWS_ENDPOINT_URL, as a user reaches MinIO or another S3-
compatible store), writes webdataset shards of JPEG pairs (stream_resume.py's) to a temporary
folder and uploads them, then measures on one core:

1. Records/s of one `StreamReader` over the shards, read only (tar parsing, the sample records)
   and read + decoded (as training does), from s3:// against local disk: the ratio is the cost
   of the store (HTTP ranged reads through s3fs, here without network latency).
2. A tiny pretraining run (the `tiny` preset, the shards as its vl data) writes a checkpoint;
   resuming it, the seconds from `flava.train.main` to the first training step, with the
   checkpoint and run directory on local disk against both on s3:// (the checkpoint is fetched
   to this machine first; uploads happen in the background).

Prints the machine on top and ratios against the local references measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, log, machine_info
from stream_resume import write_shards

from flava.data.sources import TarShards, expand_shards
from flava.data.streams import Layout, StreamReader


def start_server() -> object:
    """moto's S3 server on a free loopback port; AWS_ENDPOINT_URL and dummy credentials set."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return server


def records_per_second(urls: list[str], records: int, decode: bool) -> float:
    """Records/s of one reader (shuffle buffer 256) over `urls`, decoding each when `decode`."""
    src = TarShards(urls, shuffle_buffer=256)
    reader = StreamReader(src, "vl", 0, (2, 0), Layout(0, 1, 0, 1))
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(records):
        record = next(reader)
        if decode:
            src.decode(record, "vl", rng).image.load()
    return records / (time.perf_counter() - start)


def train_args(shards: str, run_dir: str, steps: int, *extra: str) -> list[str]:
    return [
        "config=pretraining/demo.yaml",
        "training.batch_size=8",
        "training.num_workers=0",
        "training.warmup_steps=1",
        "training.lightning.limit_val_batches=0",
        "training.lightning.enable_progress_bar=false",
        "training.evaluation.enabled=false",
        "training.lightning_checkpoint.every_n_train_steps=null",
        "datasets.selected=[vl]",
        f"datasets.vl.train=[{{type: webdataset, shards: ['{shards}'], shuffle_buffer: 64}}]",
        "model.kmeans_codes=16",
        "model.kmeans_images=16",
        f"training.run_dir={run_dir}",
        f"training.lightning.max_steps={steps}",
        *extra,
    ]


def seconds_to_first_step(args: list[str]) -> float:
    """Seconds from `flava.train.main(args)` to its first training step."""
    import flava.training.module as module
    from flava.train import main

    cls = module.FlavaPretrainingModule
    original, first = cls.training_step, []

    def timed(self, *a, **k):
        first.append(time.perf_counter()) if not first else None
        return original(self, *a, **k)

    cls.training_step = timed
    start = time.perf_counter()
    try:
        assert main(args) == 0
    finally:
        cls.training_step = original
    return first[0] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--records", type=int, default=1536, help="records timed per reading")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    log(describe(machine_info()))
    server = start_server()
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bench")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "shards").mkdir()
        local = write_shards(Path(tmp) / "shards", args.shards, args.per_shard)
        fs.put(f"{tmp}/shards/", "bench/shards/", recursive=True)
        remote = expand_shards(["s3://bench/shards/"])
        size = sum(Path(u).stat().st_size for u in local) / 2**20
        log(f"{args.shards} shards x {args.per_shard} JPEG pairs ({size:.0f} MiB), one reader")
        for decode in (False, True):
            disk = [records_per_second(local, args.records, decode) for _ in range(args.rounds)]
            s3 = [records_per_second(remote, args.records, decode) for _ in range(args.rounds)]
            a, b = statistics.median(disk), statistics.median(s3)
            what = "read + decode" if decode else "read only    "
            log(f"{what}: local {a:8.1f} records/s | s3 {b:8.1f} records/s | s3/local {b / a:.3f}")
        resume_times(fs, tmp, args.rounds)
    server.stop()


def resume_times(fs: object, tmp: str, rounds: int) -> None:
    """The resume benchmark (2. of the module doc)."""
    shards = f"{tmp}/shards"
    first = f"{tmp}/run"
    seconds_to_first_step(train_args(shards, first, 2))
    ckpt = f"{first}/checkpoints/last.ckpt"
    fs.put(ckpt, "bench/run/checkpoints/last.ckpt")  # type: ignore[attr-defined]
    size = Path(ckpt).stat().st_size / 2**20
    local, remote = [], []
    for i in range(rounds):
        resume = f"training.lightning_load_from_checkpoint={ckpt}"
        local.append(seconds_to_first_step(train_args(shards, f"{tmp}/local{i}", 3, resume)))
        resume = "training.lightning_load_from_checkpoint=s3://bench/run/checkpoints/last.ckpt"
        run = f"s3://bench/resumed{i}"
        remote.append(seconds_to_first_step(train_args("s3://bench/shards/", run, 3, resume)))
    a, b = statistics.median(local), statistics.median(remote)
    log(f"resume to the first step ({size:.0f} MiB checkpoint): local {a:.2f} s | s3 {b:.2f} s")
    log(f"  s3/local {b / a:.2f}x; s3 minus local {b - a:.2f} s")


if __name__ == "__main__":
    main()
