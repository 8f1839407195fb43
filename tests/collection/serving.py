"""A flava.serve app on a loopback port for the serve tests: uvicorn in a thread, over an index
built with flava.embed and flava.index from the collection fixtures."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from flava.config.serve import ServeRunConfig
from flava.embed import main as embed
from flava.index import main as index

from .test_embed import captions_args, embed_args

SETTINGS = ServeRunConfig(k=6, max_k=20, max_upload="64KB", thumbnail_size=64)
"""What the tests serve with: a small upload limit to pass over."""


def build_index(model: Path, root: Path, source: list[str], *extra: str) -> Path:
    """`source` embedded (into root/emb) and its image embeddings indexed into root/index."""
    assert embed(embed_args(model, root / "emb", *source, *extra)) == 0
    out = root / "index"
    assert index([f"embeddings=[{root / 'emb'}]", f"out={out}", "index.field=image"]) == 0
    return out


def messy_index(model: Path, folder: Path, root: Path) -> Path:
    """The held-out captions folder (PNG modes, SVG, zero-byte and truncated files, captions in a
    `text` field) embedded as pairs and indexed by image."""
    extra = ("embed.shard_size=4", "data.max_skipped_fraction=0.5")
    return build_index(model, root, captions_args(folder), *extra)


def wds_index(model: Path, shards: Path, root: Path) -> Path:
    """The webdataset shards (one cut short) embedded by image and indexed."""
    source = ["data.source.type=webdataset", f"data.source.shards=[{shards}]"]
    return build_index(model, root, source, "embed.modality=image")


@contextlib.contextmanager
def serving(index_dir: Path, **settings: object) -> Iterator[str]:
    """The app over `index_dir` served by uvicorn in a thread; yields its base URL."""
    import uvicorn

    from flava.serve import build

    config = replace(SETTINGS, index=str(index_dir), device="cpu", **settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build(config), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def call(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET (or a POST of `data`), errors included."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def multipart(fields: dict[str, str | tuple[str, bytes, str]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of text fields and (file name, bytes, type) files, and its
    Content-Type header."""
    boundary = "flava-test-boundary-7d1f3a"
    parts = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, payload, kind = value
            head = (
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {kind}\r\n\r\n"
            )
        else:
            head, payload = f'Content-Disposition: form-data; name="{name}"\r\n\r\n', value.encode()
        parts.append(f"--{boundary}\r\n{head}".encode() + payload + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
