"""Byte streams of shards: a local file, or a remote one (http(s), `pipe:COMMAND`, an fsspec URL
such as s3://, gs://) that survives a dropped connection or a failing store.

A remote shard is read in chunks; when a read fails (a connection reset in the middle of the
body, a 503 / SlowDown answer that the store's own client gave up on, the server restarting) the
stream waits (`backoff`, doubled at each further failure), opens the shard again at the byte it
had reached (an fsspec seek, an http Range request; a `pipe:` command runs again and the bytes
before are passed over) and reads on, so the tar reader above it never sees the break: no record
is read twice or skipped. After `retries` failures in a row without a new byte it raises
`OSError`, and the shard reader skips the rest of the shard (counted as `shard_unreadable`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import IO, Any

log = logging.getLogger("flava.data.sources")

CHUNK = 8 << 20
"""Bytes asked of a remote shard per read: one ranged request of an fsspec store."""


def is_url(text: str) -> bool:
    """A `protocol://` URL or a `pipe:` command (not a local path)."""
    return text.startswith("pipe:") or bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text))


class _Whole:
    """A response body that raises OSError when it ends before its Content-Length (http.client
    ends a cut connection's body quietly, and tar would take the cut for the archive's end)."""

    def __init__(self, stream: IO[bytes], length: str | None) -> None:
        self.stream, self.read_bytes = stream, 0
        self.length = int(length) if length and length.isdigit() else None

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.read_bytes += len(data)
        if not data and size and self.length is not None and self.read_bytes < self.length:
            raise OSError(f"connection closed after {self.read_bytes} of {self.length} bytes")
        return data

    def close(self) -> None:
        self.stream.close()


class _Pipe:
    """The output of a `pipe:` command; its end raises OSError when the command failed."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)

    def read(self, size: int = -1) -> bytes:
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(size)
        if not data and size:
            status = self.proc.wait()
            if status > 0:
                raise OSError(f"{self.command!r} exited with status {status}")
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc.wait()


def _pass_over(stream: Any, count: int) -> None:
    """Read and drop the first `count` bytes of `stream` (it cannot start elsewhere)."""
    while count > 0:
        data = stream.read(min(count, CHUNK))
        if not data:
            raise OSError(f"the stream ended {count} bytes before the byte to resume at")
        count -= len(data)


def open_at(url: str, at: int, timeout: float) -> Any:
    """A remote shard's stream from byte `at`: an fsspec file seeked there, an http(s) answer to
    a Range request, or a `pipe:` command's output past its first `at` bytes."""
    if url.startswith("pipe:"):
        stream: Any = _Pipe(url[5:])
    elif url.startswith(("http://", "https://")):
        request = urllib.request.Request(url, headers={"Range": f"bytes={at}-"} if at else {})
        response = urllib.request.urlopen(request, timeout=timeout)
        stream = _Whole(response, response.headers.get("Content-Length"))
        if response.status == 206:  # the server started at `at`
            return stream
    else:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        stream = fs.open(path, "rb", cache_type="none")  # each read one ranged request
        stream.seek(at)
        return stream
    try:
        _pass_over(stream, at)
    except BaseException:
        stream.close()
        raise
    return stream


def read_range(url: str, start: int, end: int, timeout: float = 5.0) -> bytes:
    """Bytes `start` to `end` (exclusive) of a shard, fewer where it ends first, in one read: a
    local file's seek, an http(s) Range request (a server that ignores Range is an OSError,
    not a whole shard read), an fsspec store's ranged read. A `pipe:` command has no ranges
    (ValueError); a failure is an OSError (no retries: the caller has another way)."""
    if url.startswith("pipe:"):
        raise ValueError(f"{url!r} is a command: its bytes can only be read in order")
    if not is_url(url):
        with open(url, "rb") as f:
            f.seek(start)
            return f.read(end - start)
    if url.startswith(("http://", "https://")):
        headers = {"Range": f"bytes={start}-{end - 1}"}
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 206:
                raise OSError(f"{url} answered {response.status} to a Range request")
            return response.read(end - start)
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return bytes(fs.cat_file(path, start=start, end=end))


class ResumingStream(io.RawIOBase):
    """A remote shard read in chunks, reopened at the byte it reached after a failed read (see
    the module doc); `resumed` lists the byte offsets it reopened at."""

    def __init__(
        self,
        url: str,
        opener: Callable[[int], Any],
        retries: int = 3,
        backoff: float = 1.0,
        chunk: int = CHUNK,
    ) -> None:
        super().__init__()
        self.url, self.opener, self.retries, self.backoff = url, opener, retries, backoff
        self.chunk = chunk
        self.position = 0  # bytes of the shard received
        self.resumed: list[int] = []
        self._stream: Any = None
        self._buffer, self._at = b"", 0  # the chunk read last, and how much of it is handed out
        self._ended = False

    def _fill(self) -> None:
        """Read the next chunk, retrying failures (see the class doc)."""
        failures = 0
        while True:
            try:
                if self._stream is None:
                    self._stream = self.opener(self.position)
                data = self._stream.read(self.chunk)
            except Exception as exc:  # a transport's errors come in many types
                self._drop()
                failures += 1
                why = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
                if failures > self.retries:
                    raise OSError(f"{why} ({failures} tries at byte {self.position})") from None
                delay = self.backoff * 2 ** (failures - 1)
                at = self.position
                log.info("%s failed at byte %d (%s); retry in %gs", self.url, at, why, delay)
                time.sleep(delay)
                self.resumed.append(self.position)
                continue
            self._ended = not data
            self._buffer, self._at = data, 0
            self.position += len(data)
            return

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of the chunk at hand (the next chunk when it is used up; all the
        rest of the shard for -1); b"" at the end of the shard."""
        if size < 0:
            parts = []
            while data := self.read(self.chunk):
                parts.append(data)
            return b"".join(parts)
        while not self._left() and not self._ended:
            self._fill()
        take = min(size, self._left())
        out = self._buffer[self._at : self._at + take]
        self._at += take
        return out

    def _left(self) -> int:
        return len(self._buffer) - self._at

    def finish(self) -> None:
        """Read to the end (a `pipe:` command's padding: its exit status is then checked)."""
        while not self._ended:
            self._fill()

    def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def close(self) -> None:
        self._drop()
        super().close()


@contextlib.contextmanager
def open_shard(
    url: str, timeout: float = 5.0, retries: int = 0, backoff: float = 1.0, chunk: int = CHUNK
) -> Iterator[IO[bytes] | ResumingStream]:
    """A binary stream of a local path, or of a remote shard that resumes after failures
    (`ResumingStream`); a remote one read to its end is read to the end of its bytes."""
    if not is_url(url):
        with open(url, "rb") as f:
            yield f
        return
    stream = ResumingStream(url, lambda at: open_at(url, at, timeout), retries, backoff, chunk)
    try:
        yield stream
        stream.finish()
    finally:
        stream.close()
