"""Why a sample or a source cannot be used: the skip reasons and the exceptions that carry them.

A sample that cannot be used raises `BadSample` naming one of `SKIP_REASONS`; `skip_reason` maps
any exception met while reading a sample to its reason (`flava.data.sources.skips` counts them).
"""

from __future__ import annotations

import urllib.error
from typing import Any

from PIL import Image

from flava.config import ConfigError

SKIP_REASONS = (
    "zero_byte_image",
    "truncated_image",
    "unsupported_image_format",
    "unreadable_image",
    "decompression_bomb",
    "image_unavailable",
    "missing_image",
    "empty_text",
    "bad_label",
    "shard_unreadable",
)
"""Why a sample was skipped (`BadSample.reason`); counted per reason and written to metrics."""


class BadSample(ValueError):
    """A sample that cannot be used; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return type(self), (self.reason, str(self))  # survives DataLoader workers


class UnreadableShard(OSError):
    """A shard that could not be read (after its retries); the reader skips the rest of it."""


class DataError(RuntimeError):
    """The data cannot feed the run (too many bad samples); the message is one line."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the cause
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def skip_reason(exc: BaseException) -> str:
    """The `SKIP_REASONS` entry for an exception raised while reading a sample."""
    if isinstance(exc, BadSample):
        return exc.reason
    if isinstance(exc, UnreadableShard):
        return "shard_unreadable"
    if isinstance(exc, Image.DecompressionBombError):
        return "decompression_bomb"
    if isinstance(exc, (FileNotFoundError, PermissionError, TimeoutError, urllib.error.URLError)):
        return "image_unavailable"
    return "unreadable_image"


class SourceError(ConfigError):
    """A dataset that cannot be read; the message is one line naming it and how to provide it."""


SAMPLE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)
"""What reading one sample may raise for a sample that cannot be used (it is skipped)."""
