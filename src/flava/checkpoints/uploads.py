"""Uploads to a run directory at a URL (s3://, gs://, ...), in the background and retried.

A checkpoint is first written to a local staging file (what the other processes of a run wait
for at Lightning's barrier is this local write, however slow the store), then copied to its URL
by one thread, in order, each upload tried `retries` more times with back-off. Object stores
replace an object only when its upload completes (S3 and GCS commit a whole object or nothing),
so a checkpoint whose upload failed never replaces the last good one: the failure is logged in
one line, the run goes on, and the local copy is kept (and named) until a later upload of the
same name succeeds. A newer checkpoint of a name supersedes one still waiting for its turn.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("flava")

T = TypeVar("T")


class UploadError(RuntimeError):
    """An upload to the run directory that failed after its retries; the message is one line."""


def retrying(action: Callable[[], T], what: str, retries: int, backoff: float) -> T:
    """`action()`, tried again after a failure up to `retries` times (back-off `backoff` s,
    doubled each time); the last failure raises `UploadError` naming `what`."""
    for attempt in itertools.count():
        try:
            return action()
        except Exception as exc:  # a store's errors come in many types
            why = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            if attempt >= retries:
                raise UploadError(f"{what} failed after {attempt + 1} tries ({why})") from None
            delay = backoff * 2**attempt
            log.info("%s failed (%s); retry in %gs", what, why, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class _Job:
    url: str
    local: Path | None  # None: remove `url`


class Uploads:
    """A queue of uploads (and removals) to URLs, run by one background thread (module doc)."""

    def __init__(self, staging: Path, retries: int = 4, backoff: float = 1.0) -> None:
        self.staging, self.retries, self.backoff = staging, retries, backoff
        self.failed: dict[str, tuple[Path, str]] = {}  # url -> (local copy, one-line reason)
        self._jobs: list[_Job] = []
        self._busy = False
        self._names = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, write: Callable[[Path], None], url: str) -> None:
        """Write a file with `write(local_path)` now; upload it to `url` in the background."""
        self.staging.mkdir(parents=True, exist_ok=True)
        local = self.staging / f"{next(self._names)}-{url.rstrip('/').rsplit('/', 1)[-1]}"
        write(local)
        with self._cond:
            for job in [j for j in self._jobs if j.url == url and j.local is not None]:
                self._jobs.remove(job)  # superseded before its turn
                _unlink(job.local)
            self._jobs.append(_Job(url, local))
            self._start()
            self._cond.notify_all()

    def remove(self, url: str) -> None:
        """Remove `url` once the uploads queued before have run."""
        with self._cond:
            self._jobs.append(_Job(url, None))
            self._start()
            self._cond.notify_all()

    def wait(self) -> list[str]:
        """Block until every queued upload has run; the one-line reasons of the URLs whose
        newest upload failed."""
        with self._cond:
            while self._jobs or self._busy:
                self._cond.wait()
            return [why for _, why in self.failed.values()]

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="flava-uploads", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job, self._busy = self._jobs.pop(0), True
            try:
                self._do(job)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _do(self, job: _Job) -> None:
        import fsspec

        fs, path = fsspec.core.url_to_fs(job.url)
        if job.local is None:
            old = self.failed.pop(job.url, None)  # its local copy goes with it
            _unlink(old[0]) if old is not None else None
            try:
                retrying(lambda: fs.rm(path), f"removing {job.url}", self.retries, self.backoff)
            except UploadError as exc:
                log.warning("%s", exc)
            return
        local = job.local
        try:
            retrying(
                lambda: fs.put_file(str(local), path),
                f"upload of {job.url}",
                self.retries,
                self.backoff,
            )
        except UploadError as exc:
            why = f"{exc}; {job.url} keeps its last good version; this one stays at {local}"
            log.warning("%s", why)
            old = self.failed.get(job.url)
            if old is not None:
                _unlink(old[0])
            self.failed[job.url] = (local, why)
            return
        old = self.failed.pop(job.url, None)
        if old is not None:
            _unlink(old[0])
        _unlink(local)


def _unlink(path: Any) -> None:
    Path(path).unlink(missing_ok=True)
