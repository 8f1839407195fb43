"""Resume time of a streamed source against the records consumed, and records/s of the stream.

    python benchmarks/stream_resume.py                       # 16 shards x 256 JPEG pairs
    python benchmarks/stream_resume.py --shards 32 --per-shard 512 --buffer 1000

Writes webdataset tar shards of JPEG photographs (scikit-image's samples, random crops; textures
when it is missing) with captions to a temporary folder, then measures on one core:

1. Resume: the time from a saved position to the first record, after 0.5, 1, 2, 4 and 8 epochs
   consumed by one reader. `flava.data.streams.StreamReader` restores its position (epoch, shard,
   offset, buffer references); the reference is the replay the previous flava did (read, not
   decode, every record consumed since step 0). Records read from shards are counted for both.
2. Throughput: records/s of the reader with the decode of every record (`decode`, as training
   does), with and without `state()` taken after every batch of --batch records, against the
   decode floor (the same records decoded from memory, no tar reading).

Prints ratios against the references measured in the same run, and the machine on top.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, log, machine_info

from flava.data.sources import TarShards
from flava.data.streams import Layout, StreamReader


def photographs(count: int, seed: int) -> list[bytes]:
    """`count` JPEGs of 160-320 px from scikit-image's photographs (textures without it)."""
    rng = np.random.default_rng(seed)
    try:
        from skimage import data as skdata

        bases = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    except ImportError:
        bases = [rng.integers(0, 255, (400, 400, 3), dtype=np.uint8) for _ in range(4)]
    out = []
    for i in range(count):
        base = bases[i % len(bases)]
        side = int(rng.integers(160, 320))
        y = int(rng.integers(0, base.shape[0] - side // 2))
        x = int(rng.integers(0, base.shape[1] - side // 2))
        crop = Image.fromarray(base[y : y + side, x : x + side]).convert("RGB")
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def write_shards(root: Path, shards: int, per_shard: int) -> list[str]:
    """Tar shards of JPEG + caption pairs."""
    import tarfile

    images = photographs(64, 0)
    urls = []
    for s in range(shards):
        path = root / f"pairs-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                for ext, data in (
                    ("jpg", images[(s * per_shard + i) % len(images)]),
                    ("txt", f"photograph {s} {i}".encode()),
                ):
                    info = tarfile.TarInfo(f"{s:04d}{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        urls.append(str(path))
    return urls


class Counted(TarShards):
    """TarShards counting the samples it reads from its shards."""

    read = 0

    def shard_samples(self, shard: int):
        for sample in super().shard_samples(shard):
            Counted.read += 1
            yield sample


def resume_seconds(urls: list[str], buffer: int, consumed: int) -> tuple[float, int, float, int]:
    """(restore seconds, records read; replay seconds, records read) after `consumed` records."""
    layout = Layout(0, 1, 0, 1)
    first = StreamReader(Counted(urls, shuffle_buffer=buffer), "vl", 0, (2, 0), layout)
    for _ in range(consumed):
        next(first)
    state = first.state()
    Counted.read = 0
    start = time.perf_counter()
    resumed = StreamReader(Counted(urls, shuffle_buffer=buffer), "vl", 0, (2, 0), layout, state)
    next(resumed)
    restore, restore_read = time.perf_counter() - start, Counted.read
    Counted.read = 0
    start = time.perf_counter()
    replay = StreamReader(Counted(urls, shuffle_buffer=buffer), "vl", 0, (2, 0), layout)
    for _ in range(consumed + 1):
        next(replay)
    return restore, restore_read, time.perf_counter() - start, Counted.read


def throughput(urls: list[str], buffer: int, records: int, batch: int, states: bool) -> float:
    """Records/s of the reader plus decode (and `state()` per batch when `states`)."""
    src = TarShards(urls, shuffle_buffer=buffer)
    reader = StreamReader(src, "vl", 0, (2, 0), Layout(0, 1, 0, 1))
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(records):
        src.decode(next(reader), "vl", rng).image.load()
        if states and (i + 1) % batch == 0:
            reader.state()
    return records / (time.perf_counter() - start)


def decode_floor(urls: list[str], records: int) -> float:
    """Records/s of decoding the same kind of records held in memory (no tar reading)."""
    src = TarShards(urls, shuffle_buffer=0)
    held = [s for _, s in zip(range(records), src.records(range(len(urls)), "vl"), strict=False)]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for sample in held:
        src.decode(sample, "vl", rng).image.load()
    return len(held) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--buffer", type=int, default=1000, help="shuffle buffer (records)")
    parser.add_argument("--batch", type=int, default=64, help="records per batch (state taken)")
    parser.add_argument("--records", type=int, default=2048, help="records timed for throughput")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    log(describe(machine_info()))
    epoch = args.shards * args.per_shard
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_shards(Path(tmp), args.shards, args.per_shard)
        log(f"{args.shards} shards x {args.per_shard} pairs, shuffle buffer {args.buffer}")
        log("epochs consumed | restore s (records read) | replay s (records read) | replay/restore")
        for epochs in (0.5, 1, 2, 4, 8):
            consumed = int(epochs * epoch)
            runs = [resume_seconds(urls, args.buffer, consumed) for _ in range(args.rounds)]
            restore = statistics.median(r[0] for r in runs)
            replay = statistics.median(r[2] for r in runs)
            log(
                f"{epochs:>15} | {restore:8.3f} ({runs[0][1]:>6}) | {replay:8.3f} "
                f"({runs[0][3]:>7}) | {replay / restore:8.1f}x"
            )
        floor = statistics.median(decode_floor(urls, args.records) for _ in range(args.rounds))
        plain, stated = [], []
        for _ in range(args.rounds):
            plain.append(throughput(urls, args.buffer, args.records, args.batch, False))
            stated.append(throughput(urls, args.buffer, args.records, args.batch, True))
        a, b = statistics.median(plain), statistics.median(stated)
        log(f"decode floor (from memory): {floor:8.1f} records/s")
        log(f"stream + decode:            {a:8.1f} records/s ({a / floor:.2f}x the floor)")
        ratio = f"{b / floor:.2f}x the floor, {b / a:.3f}x without state()"
        log(f"stream + decode + state():  {b:8.1f} records/s ({ratio})")


if __name__ == "__main__":
    main()
