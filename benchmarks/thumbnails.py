"""A thumbnail of a record inside a webdataset shard: the shard scanned to the record's key (what
flava.serve did before, and still does without a byte range) against the record's image byte
range read alone (`metadata.image_range`, what flava.embed writes now).

    python benchmarks/thumbnails.py                    # 2000 records of ~50 KB, the last one
    python benchmarks/thumbnails.py --records 2000 --repeats 5

One local uncompressed shard of `--records` samples (a noise JPEG of about 50 KB, a caption and
a JSON member each, as real shards hold); the record asked for is the last one. Both sides run
`flava.collection.thumbnails.record_image` on the same table row, with and without its
`image_range`, then make the JPEG thumbnail (`encode_thumbnail`, 160 px): the median of
`--repeats` calls each, with the file's pages in the page cache (warm) and evicted from it
before each call (cold, posix_fadvise DONTNEED; what a server meets on a shard not read lately).
A remote shard (s3://, http) widens the gap: the scan moves the bytes over the network.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from machine import cpu_info, log

from flava.collection import thumbnails
from flava.data.sources import TarShards


def noise_jpegs(count: int, side: int, seed: int = 0) -> list[bytes]:
    """`count` distinct JPEGs of smooth-ish noise, about 50 KB each at side 280."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (side // 2, side // 2, 3), dtype=np.uint8)
        picture = Image.fromarray(small).resize((side, side), Image.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_shard(path: Path, records: int, side: int) -> tuple[str, float]:
    """A shard of `records` samples; (the last key, mean image bytes)."""
    import tarfile

    images = noise_jpegs(16, side)
    last = noise_jpegs(1, side, seed=1)[0]
    sizes = []
    with tarfile.open(path, "w") as tar:
        for i in range(records):
            key = f"{i:09d}"
            image = last if i == records - 1 else images[i % len(images)]
            sizes.append(len(image))
            meta = json.dumps({"caption": f"record {i}", "width": side}).encode()
            for ext, payload in (("jpg", image), ("txt", f"record {i}".encode()), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return f"{records - 1:09d}", sum(sizes) / len(sizes)


def row_of(shard: Path, key: str) -> dict:
    """The table row flava.embed writes for record `key` (read once through the tar reader)."""
    sample = next(s for s in TarShards([str(shard)]).shard_samples(0) if s.key == key)
    assert sample.image_range is not None
    meta = {"shard": str(shard), "image_range": list(sample.image_range)}
    return {"key": key, "path": None, "metadata": json.dumps(meta)}


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def median_ms(row: dict, shard: Path, repeats: int, cold: bool) -> float:
    """Median milliseconds of one thumbnail of `row`."""
    times = []
    for _ in range(repeats):
        if cold:
            evict(shard)
        start = time.perf_counter()
        image = thumbnails.record_image(row)
        assert image is not None
        thumbnails.encode_thumbnail(image, 160)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--side", type=int, default=280, help="image side (280: about 50 KB)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write the shard (a temp folder)")
    args = parser.parse_args()
    cpu = cpu_info()
    flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in cpu["vector_flags"]]
    log(
        f"machine: {cpu['cpu_model']}, {cpu['cpu_count']} CPUs, flags {flags or 'none'}; "
        f"load average {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        shard = Path(folder) / "part-000000.tar"
        key, mean = write_shard(shard, args.records, args.side)
        log(
            f"shard: {args.records} records, images {mean / 1000:.1f} KB on average, "
            f"{shard.stat().st_size / 1e6:.1f} MB; the record asked for: {key} (the last)"
        )
        ranged = row_of(shard, key)
        scanned = {**ranged, "metadata": json.dumps({"shard": str(shard)})}
        assert np.array_equal(
            np.asarray(thumbnails.record_image(ranged)),
            np.asarray(thumbnails.record_image(scanned)),
        )
        log("| cache | scan to the key | byte range | scan / range |")
        log("|---|---|---|---|")
        for cold in (False, True):
            scan = median_ms(scanned, shard, args.repeats, cold)
            rng = median_ms(ranged, shard, args.repeats, cold)
            name = "cold (evicted)" if cold else "warm"
            log(f"| {name} | {scan:.1f} ms | {rng:.2f} ms | {scan / rng:.0f}x |")
    log(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
