"""What the collection's library raises: one error type with an HTTP status a server maps to.

Every message is one sentence naming the problem and the fix. `QueryError` is the caller's
mistake (an empty query, a file that is not an image, k out of range: a 4xx); `IndexUnavailable`
is the collection's state (a missing, corrupt or mismatched index, tables or manifest: a 5xx).
Both are `ConfigError`s, so the commands print them as one line and exit with status 2.
"""

from __future__ import annotations

from flava.config import ConfigError


class CollectionError(ConfigError):
    """A collection operation that cannot be done; `status` is the HTTP status it maps to."""

    status: int = 500


class QueryError(CollectionError):
    """A bad query: empty text, not an image, k out of range (HTTP 400)."""

    status = 400


class IndexUnavailable(CollectionError):
    """The index, its tables or its embeddings are missing, corrupt or do not match (HTTP 503)."""

    status = 503
