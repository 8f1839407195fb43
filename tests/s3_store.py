"""A real S3-compatible server on this machine for the tests: moto's server mode on a loopback
port, behind a small HTTP proxy that injects faults (503 SlowDown answers, connections reset in
the middle of a body, throttled uploads, the server going down and coming back).

Clients reach it through the standard `AWS_ENDPOINT_URL` (botocore, so s3fs and the aws command
honour it); `store` (tests/conftest.py) sets it with dummy credentials for the test session, and
subprocesses inherit it."""

from __future__ import annotations

import http.client
import logging
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never probe the instance metadata service
    "AWS_MAX_ATTEMPTS": "1",  # botocore's own retries off: s3fs's and flava's are under test
}
"""What a client needs besides the endpoint: dummy credentials (moto accepts any)."""

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Fault:
    """Requests matching `method` and the `path` pattern get `action` (`slowdown`: a 503
    SlowDown answer; `reset`: the answer cut after `after` of its body bytes; `reset_upload`:
    the connection reset after `after` bytes of the request body), `times` times (-1: always),
    once `skip` matching requests have passed."""

    method: str
    path: str
    action: str
    times: int = 1
    after: float = 0.5
    """For resets: a fraction of the body (< 1) or a number of bytes."""
    skip: int = 0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.search(self.path, path) is not None

    def cut(self, length: int) -> int:
        return int(length * self.after) if self.after < 1 else min(int(self.after), length)


@dataclass
class Request:
    """One request the proxy saw: method, path (with query), Range header, what it answered."""

    method: str
    path: str
    range: str | None
    answer: str


@dataclass
class _State:
    faults: list[Fault] = field(default_factory=list)
    seen: list[Request] = field(default_factory=list)
    upload_rate: float | None = None  # request-body bytes per second (None: no limit)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _reset(sock: socket.socket) -> None:
    """Close `sock` with a TCP reset (a connection dropped, not a clean end)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect of S3
    server: _ProxyServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _body(self, state: _State, fault: Fault | None) -> bytes | None:
        """The raw request body (kept chunked if it was), throttled; None when cut."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = bytearray()
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                raw += self.rfile.read(size + 2) if size else b""
                if not size:
                    while (trailer := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                        raw += trailer
                    raw += b"\r\n"
                    return bytes(raw)
        length = int(self.headers.get("Content-Length") or 0)
        cut = fault.cut(length) if fault and fault.action == "reset_upload" else None
        out, start = bytearray(), time.monotonic()
        while len(out) < length:
            out += self.rfile.read(min(1 << 16, length - len(out)))
            if cut is not None and len(out) >= cut:
                return None
            if state.upload_rate:
                ahead = len(out) / state.upload_rate - (time.monotonic() - start)
                time.sleep(max(0.0, ahead))
        return bytes(out)

    def _fault(self, state: _State) -> Fault | None:
        with state.lock:
            for fault in state.faults:
                if fault.matches(self.command, self.path) and fault.times != 0:
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.times -= 1 if fault.times > 0 else 0
                    fault.hits += 1
                    return fault
        return None

    def _note(self, state: _State, answer: str) -> None:
        with state.lock:
            state.seen.append(Request(self.command, self.path, self.headers.get("Range"), answer))

    def _handle(self) -> None:
        state = self.server.state
        fault = self._fault(state)
        body = self._body(state, fault)
        if body is None:
            self._note(state, "reset during upload")
            self.close_connection = True
            _reset(self.connection)
            return
        if fault is not None and fault.action == "slowdown":
            self._note(state, "503")
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        try:
            status, reason, headers, answer = self._forward(body)
        except OSError:  # the server is down: the client sees its connection dropped
            self._note(state, "server down")
            self.close_connection = True
            _reset(self.connection)
            return
        self.send_response(status, reason)
        dropped = (
            "transfer-encoding",
            "connection",
            *(() if self.command == "HEAD" else ("content-length",)),
        )
        for name, value in headers:
            if name.lower() not in dropped:
                self.send_header(name, value)
        if self.command != "HEAD":  # HEAD: the object's length, as the server said
            self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if fault is not None and fault.action == "reset" and self.command != "HEAD":
            self.wfile.write(answer[: fault.cut(len(answer))])
            self.wfile.flush()
            self._note(state, f"reset after {fault.cut(len(answer))} bytes")
            self.close_connection = True
            _reset(self.connection)
            return
        self._note(state, str(status))
        if self.command != "HEAD":
            self.wfile.write(answer)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in ("connection", "proxy-connection"):
                    upstream.putheader(name, value)
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            answer = response.read()
            return response.status, response.reason, response.getheaders(), answer
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, upstream: int, state: _State) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.upstream, self.state = upstream, state

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (a killed run): nothing to report


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Store:
    """moto's S3 server on a loopback port behind the fault proxy; `endpoint` is the proxy's
    URL (what clients are given)."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.state = _State()
        self.moto_port = _free_port()
        self._moto: Any = None
        self._proxy: _ProxyServer | None = None
        self.port = 0
        self.bucket = ""  # the test's bucket (the `store` fixture's)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Store:
        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self._moto.start()
        self._proxy = _ProxyServer(self.port, self.moto_port, self.state)
        self.port = self._proxy.server_address[1]
        threading.Thread(target=self._proxy.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()
            self._proxy = None
        if self._moto is not None:
            self._moto.stop()
            self._moto._server.server_close()  # stop() leaves the port bound
            self._moto = None

    def restart(self, downtime: float) -> None:
        """Stop the server (and the proxy: new connections are refused), wait, start both again
        on the same ports; what the bucket held is kept (moto's state lives in this process)."""
        self.stop()
        time.sleep(downtime)
        self.start()

    def restart_later(self, delay: float, downtime: float) -> threading.Thread:
        """`restart(downtime)` in a thread, `delay` seconds from now."""
        thread = threading.Thread(target=lambda: (time.sleep(delay), self.restart(downtime)))
        thread.start()
        return thread

    def fault(self, method: str, path: str, action: str, **kwargs: Any) -> Fault:
        """Inject a fault (see `Fault`); returned, to read its `hits`."""
        fault = Fault(method, path, action, **kwargs)
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def throttle(self, bytes_per_second: float | None) -> None:
        """Limit the rate of request bodies (uploads); None: no limit."""
        self.state.upload_rate = bytes_per_second

    def requests(self, method: str | None = None, path: str = "") -> list[Request]:
        """The requests seen (of `method`, with `path` in their path)."""
        with self.state.lock:
            seen = list(self.state.seen)
        return [r for r in seen if (method is None or r.method == method) and path in r.path]

    def clear(self) -> None:
        """No faults, no throttle, no requests recorded."""
        with self.state.lock:
            self.state.faults.clear()
            self.state.seen.clear()
            self.state.upload_rate = None


def filesystem() -> Any:
    """A fresh s3fs filesystem on the store (no cached listings: other processes write too)."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
