"""A run directory: a local folder, or an fsspec URL (`s3://bucket/run`, `gs://...`,
`memory://...`, `file:///...`).

Every file a run writes into its directory goes through here. Lightning writes its checkpoints
and CSV / TensorBoard logs to the URL itself (it opens paths with fsspec); the model folder is
written locally and uploaded once complete, and what must stay on this machine (per-process
checkpoint conversions for a resume, wandb's own files, a remote checkpoint fetched to resume
from) lives in a local scratch folder.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger("flava")


def is_url(location: str | os.PathLike) -> bool:
    """A `protocol://` location (not a local path)."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", os.fspath(location)) is not None


def url_problem(location: str) -> str | None:
    """Why fsspec cannot open `location` here (unknown protocol, missing package), or None."""
    if not is_url(location):
        return None
    protocol = location.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        return f"fsspec knows no protocol {protocol!r}"
    except ImportError as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else protocol
        return f"the {protocol}:// filesystem needs a package ({why})"
    return None


def scratch_folder(location: str) -> Path:
    """A local folder kept for a remote `location` across the processes and restarts of a run
    on this machine (its name is derived from the URL)."""
    digest = hashlib.sha1(location.encode()).hexdigest()[:12]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", location.rstrip("/").rsplit("/", 1)[-1])
    return Path(tempfile.gettempdir()) / "flava-runs" / f"{tail}-{digest}"


class RunDir:
    """The run directory at `location`; names below it are '/'-separated relative paths."""

    def __init__(self, location: str | os.PathLike) -> None:
        # file:// is a local folder, given to Lightning as a path: it would take the URL for a
        # relative path and write <cwd>/file:/... (its ModelCheckpoint calls realpath on it)
        text = os.fspath(location).removeprefix("file://")
        self.remote = is_url(text)
        self.location = text.rstrip("/") if is_url(text) else str(Path(text))
        self.fs, self._root = fsspec.core.url_to_fs(self.location)
        if isinstance(self.fs, LocalFileSystem):
            self.remote = False

    def __str__(self) -> str:
        return self.location

    def __repr__(self) -> str:
        return f"RunDir({self.location!r})"

    @property
    def name(self) -> str:
        """The last part of the location (a run name for wandb / MLflow)."""
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    def url(self, *names: str) -> str:
        """The location of `names` joined below the run directory, as Lightning takes it."""
        if not names:
            return self.location
        if self.remote or is_url(self.location):
            return "/".join([self.location, *names])
        return str(Path(self.location, *names))

    def _path(self, name: str) -> str:
        return "/".join([self._root.rstrip("/"), name]) if name else self._root

    def create(self, name: str = "") -> None:
        """Make the directory (or a folder below it); object stores need none, local disks do."""
        self.fs.makedirs(self._path(name), exist_ok=True)

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self._path(name)))

    def open(self, name: str, mode: str = "r") -> IO[Any]:
        """A file below the run directory (its folder made first when writing)."""
        if "w" in mode or "a" in mode:
            parent = self._path(name).rsplit("/", 1)[0]
            self.fs.makedirs(parent, exist_ok=True)
        return self.fs.open(self._path(name), mode)

    def write_text(self, name: str, text: str) -> None:
        with self.open(name, "w") as f:
            f.write(text)

    def read_text(self, name: str) -> str:
        with self.open(name) as f:
            return f.read()

    def log_file(self, name: str) -> IO[str]:
        """A text file below the run directory opened to append lines: the file itself in a
        local run directory; at a URL a copy on this machine (in the scratch folder), started
        from the remote file (or empty), that `sync(name)` uploads."""
        if not self.remote:
            path = Path(self._path(name))
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "a", encoding="utf-8")
        local = scratch_folder(self.location) / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.unlink(missing_ok=True)  # the remote file is the log so far
        if self.exists(name):
            self.fs.get_file(self._path(name), str(local))
        return open(local, "a", encoding="utf-8")

    def sync(self, name: str) -> None:
        """Upload the local copy of a `log_file` (a URL run directory; a no-op for a local one);
        a failure is logged: the next sync sends the whole file again."""
        local = scratch_folder(self.location) / name
        if not self.remote or not local.exists():
            return
        try:
            self.fs.put_file(str(local), self._path(name))
        except Exception as exc:  # a store's errors come in many types
            log.warning("could not upload %s (%s); it is sent again later", self.url(name), exc)

    def glob(self, pattern: str) -> list[str]:
        """Names (relative to the run directory) of the files matching `pattern`."""
        root = self.fs._strip_protocol(self._root).rstrip("/") + "/"
        found = [self.fs._strip_protocol(str(p)) for p in self.fs.glob(self._path(pattern))]
        return sorted(p.removeprefix(root) for p in found)

    def move(self, name: str, to: str) -> None:
        self.fs.mv(self._path(name), self._path(to))

    def local(self, name: str) -> Path:
        """A local folder for `name`: in the run directory when it is local, else in the run's
        scratch folder on this machine (see `scratch_folder`)."""
        base = scratch_folder(self.location) if self.remote else Path(self._root)
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def publish(self, folder: Path, name: str, retries: int = 0, backoff: float = 1.0) -> str:
        """Upload the local folder `folder` (from `local(name)`) to `name` when the run directory
        is remote, tried again `retries` times after a failure (then `UploadError`, one line
        naming the local folder, which stays); its location in the run directory either way."""
        from flava.checkpoints.uploads import UploadError, retrying

        if self.remote:
            source, target = str(folder).rstrip("/") + "/", self._path(name)
            try:
                put = functools.partial(self.fs.put, source, target, recursive=True)
                retrying(put, f"upload of {self.url(name)}", retries, backoff)
            except UploadError as exc:
                raise UploadError(f"{exc}; the local copy stays at {folder}") from None
        return self.url(name)


def fetch(location: str) -> str:
    """A remote file or folder (e.g. a checkpoint to resume from) copied afresh into this
    process's scratch folder on this machine; a local path (or file:// URL) as a local path."""
    if not is_url(location):
        return location
    fs, path = fsspec.core.url_to_fs(location)
    if isinstance(fs, LocalFileSystem):
        return path
    fs.invalidate_cache(path)  # a listing cached before the file was written would hide it
    if not fs.exists(path):
        return location  # the caller's check says "no such file"
    rank = os.environ.get("RANK", "0")
    target = scratch_folder(location) / f"rank{rank}" / location.rstrip("/").rsplit("/", 1)[-1]
    if target.is_dir():  # an earlier copy (a sharded checkpoint is a folder)
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    fs.get(path, str(target), recursive=fs.isdir(path))
    return str(target)
