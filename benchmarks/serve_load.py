"""flava.serve under load on loopback: p50 / p99 latency and queries/s of text queries at 1, 8
and 32 concurrent clients, against the library answering the same queries in-process.

A collection of generated scenes is embedded and indexed (or `--index` names one), the server
runs as its own process (`python -m flava.serve`, as a user starts it), and each client holds
one keep-alive HTTP/1.1 connection, sending GET /api/search?q=...&k=10 back to back for
`--seconds` after `--warmup` seconds (asyncio streams in one process: the clients' own cost is
small next to the server's). The reference, measured in the same run: `Searcher.search_text`
called in a loop in a worker thread of another process (no HTTP), so "x library" is the served
rate over the library's.
Every answer must be 200; any other status is counted and reported.

    python benchmarks/serve_load.py --preset tiny --records 2000
    python benchmarks/serve_load.py --preset flava_full --records 500 --modality text
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe, log, machine_info, report_head

QUERIES = [
    "a red circle",
    "a small blue square on the left",
    "two green triangles",
    "a large yellow star at the top",
    "a purple hexagon next to an orange circle",
    "three shapes in a row",
    "a tiny white cross",
    "a big black diamond on the right",
]


def build(work: Path, preset: str, records: int, modality: str) -> Path:
    """Generated scenes embedded (random `preset` weights) and indexed; returns the index."""
    from flava.embed import main as embed
    from flava.index import main as index

    emb, out = work / "emb", work / "index"
    source = ["data.source.type=embedded", f"data.source.size={records}"]
    args = [*source, f"model.preset={preset}", f"out={emb}", f"embed.modality={modality}"]
    assert embed([*args, "embed.progress=false"]) == 0
    assert index([f"embeddings=[{emb}]", f"out={out}"]) == 0
    return out


def start_server(index: Path, workers: int) -> tuple[subprocess.Popen, int]:
    """`python -m flava.serve` on a free loopback port; waits for its health endpoint."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "flava.serve", f"index={index}", f"port={port}"]
    command += ["device=cpu", f"workers={workers}", "queue=1000"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5).read()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read().decode()) from None
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer within 300 s")


async def _client(port: int, paths: list[str], start: float, stop: float, out: dict) -> None:
    """One keep-alive connection sending queries until `stop`; latencies after `start`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = hash(asyncio.current_task()) % len(paths)
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        writer.write(f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        t1 = time.perf_counter()
        if t0 >= start:
            out["latencies"].append(t1 - t0)
            if status != 200:
                out["errors"][status] = out["errors"].get(status, 0) + 1
        i += 1
    writer.close()


async def _level(port: int, clients: int, warmup: float, seconds: float) -> dict:
    """`clients` connections for warmup + seconds; latencies of the timed part."""
    paths = [f"/api/search?{urllib.parse.urlencode({'q': q, 'k': 10})}" for q in QUERIES]
    out: dict = {"latencies": [], "errors": {}}
    start = time.perf_counter() + warmup
    stop = start + seconds
    await asyncio.gather(*(_client(port, paths, start, stop, out) for _ in range(clients)))
    return out


def summary(latencies: list[float], seconds: float) -> dict:
    """p50, p99 and mean latency (ms) and queries/s of a list of latencies."""
    ms = np.asarray(latencies) * 1000
    return {
        "queries": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "queries_per_s": round(len(ms) / seconds, 1),
    }


def library_reference(index: Path, seconds: float) -> dict:
    """The library alone: `Searcher.search_text` in a loop, in a process of its own."""
    command = [sys.executable, __file__, "--library-only", "--index", str(index)]
    done = subprocess.run([*command, "--seconds", str(seconds)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def library_loop(index: Path, seconds: float) -> dict:
    """`Searcher.search_text` on the queries in turn for `seconds` (after a warm-up), in one
    worker thread as the server calls it (torch's OpenMP threads behave otherwise when called
    from the main thread: on 2 shared cores the main thread's queries took 10-20x longer)."""
    from concurrent.futures import ThreadPoolExecutor

    from flava.collection import Searcher

    searcher = Searcher.open(index, device="cpu")
    with ThreadPoolExecutor(1) as worker:
        return worker.submit(_timed_queries, searcher, seconds).result()


def _timed_queries(searcher: Any, seconds: float) -> dict:
    """The loop of `library_loop`."""
    for q in QUERIES:  # warm-up
        searcher.search_text(q, 10)
    latencies, stop, i = [], time.perf_counter() + seconds, 0
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        searcher.search_text(QUERIES[i % len(QUERIES)], 10)
        latencies.append(time.perf_counter() - t0)
        i += 1
    return summary(latencies, sum(latencies))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=Path, help="an index flava.index wrote (default: build one)")
    p.add_argument("--preset", default="tiny", help="model preset of the built collection")
    p.add_argument("--records", type=int, default=2000, help="scenes in the built collection")
    p.add_argument("--modality", default="pair", choices=["pair", "image", "text"])
    p.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds per level")
    p.add_argument("--workers", type=int, default=1, help="the server's workers= setting")
    p.add_argument("--json", type=Path, help="write the report here too")
    p.add_argument("--library-only", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.library_only:  # the reference's own process
        print(json.dumps(library_loop(args.index, args.seconds)))
        return
    import torch

    machine = machine_info(torch.device("cpu"))
    log(describe(machine))
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index or build(Path(tmp), args.preset, args.records, args.modality)
        info = json.loads((index / "index.json").read_text())
        precision = info["embedding"]["precision"]
        log(
            f"index: {info['vectors']} {info['field']} vectors, {info['kind']}, dim {info['dim']}"
            f"; queries embedded in {precision}"
        )
        reference = library_reference(index, args.seconds)
        log(f"library alone: {reference}")
        proc, port = start_server(index, args.workers)
        levels = {}
        try:
            for clients in (int(c) for c in args.clients.split(",")):
                got = asyncio.run(_level(port, clients, args.warmup, args.seconds))
                row = {**summary(got["latencies"], args.seconds), "errors": got["errors"]}
                row["x_library"] = round(row["queries_per_s"] / reference["queries_per_s"], 3)
                levels[clients] = row
                log(f"{clients:>3} clients: {row}")
        finally:
            proc.terminate()
            proc.wait(30)
    report = {**report_head("serve_load.py", sys.argv[1:], args, machine)}
    report |= {"index": {k: info[k] for k in ("vectors", "field", "kind", "dim", "embedding")}}
    report |= {"library": reference, "served": levels}
    print(f"{'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'q/s':>8} {'x library':>9} errors")
    for clients, row in levels.items():
        print(
            f"{clients:>7} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['queries_per_s']:>8} "
            f"{row['x_library']:>9} {row['errors'] or 0}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
