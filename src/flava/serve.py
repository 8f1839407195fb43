"""`python -m flava.serve index=INDEX [port=8000] [key=value ...]`: search a collection from a
web page and a JSON API.

Loads the index flava.index wrote, its tables and the model the collection was embedded with
(`model=` overrides), then serves on http://HOST:PORT/ (uvicorn): the page (a search box, a
query by uploaded picture, a grid of result thumbnails with captions and scores) and the API
(/api/search?q=TEXT&k=N, POST /api/search/image, /api/health, /api/thumbnail/ID; see
flava.collection.app). A missing or unreadable index stops it before it starts, in one line
(exit 2); an index that changes on disk while it serves is read again, and one that breaks
answers 503 until it is whole again. Needs the `collection` extra (fastapi, uvicorn,
python-multipart).

Examples:
    python -m flava.serve index=/data/index
    python -m flava.serve index=/data/index host=0.0.0.0 port=8080 max_upload=20MB
Keys: `python -m flava.serve --help`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from flava.config import ConfigError, cli_main, describe, load_config
from flava.config.checks import given
from flava.config.search import INDEX_UNSET
from flava.config.serve import ServeRunConfig, validate_serve

log = logging.getLogger("flava")


def build(settings: ServeRunConfig) -> Any:
    """The app serving `settings.index` (loaded here; `IndexUnavailable` when it cannot be)."""
    try:
        from flava.collection.app import create_app
    except ImportError as exc:
        raise ConfigError(
            f"flava.serve needs fastapi, uvicorn and python-multipart ({exc}); install them "
            "with pip install 'flava[collection]'"
        ) from None
    from flava.collection.service import SearchService

    index = given(settings.index, INDEX_UNSET)
    service = SearchService.open(index, model=settings.model, device=settings.device)
    return create_app(service, settings)


def run(settings: ServeRunConfig) -> None:
    """Load the index per `settings` and serve until interrupted."""
    import uvicorn

    app = build(settings)
    records = app.state.service.searcher().size
    log.info(
        "serving %d records of %s: the page and the API at the address below",
        records,
        settings.index,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
        log_level="info",
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shut down on Ctrl-C, then raised it again
        pass
    except (OSError, SystemExit):  # uvicorn logged why (e.g. the port is taken) and exited
        if server.started:
            raise
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port} (uvicorn's reason is logged "
            "above); choose another port= or host="
        ) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad configuration, missing or broken index)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(ServeRunConfig),
        lambda a: load_config(a, ServeRunConfig, validate_serve),
        run,
    )


if __name__ == "__main__":
    sys.exit(main())
