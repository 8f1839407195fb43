"""The HTTP API and the web page over a `SearchService`: a FastAPI app, served by uvicorn
(`python -m flava.serve`).

    GET  /                        the page (static/: index.html, app.js, app.css)
    GET  /api/health              records, dim, model, index kind, the page's k and limits
    GET  /api/search?q=TEXT&k=N   the k records nearest to a text
    POST /api/search              the same, as JSON {"q": TEXT, "k": N}
    POST /api/search/image?k=N    the k records nearest to a picture: a multipart form's `image`
                                  file (and `k`), or the picture's bytes as the body (image/*)
    GET  /api/thumbnail/ID        record ID's image as a JPEG thumbnail (a grey PNG when its
                                  image cannot be had; header X-Thumbnail: image / placeholder)

A search answers {"query", "k", "took_ms", "results": [SearchResult.to_dict() + "thumbnail"]},
best first. Every error is {"error": "<one sentence>"}: 400 a bad query (empty text, not an
image, k out of range), 404 no such record or endpoint, 413 a body over max_upload, 503 an
index that broke while serving or a full queue. The server goes on serving after each.

Queries are embedded in worker threads off the event loop, at most `workers` at a time, with at
most `queue` more waiting (one more is answered 503 at once), so the page, health and
thumbnails (their own threads) are answered while queries run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from flava.collection.errors import CollectionError, QueryError
from flava.collection.service import SearchService
from flava.config.checks import given
from flava.config.index import parse_bytes
from flava.config.serve import ServeRunConfig

log = logging.getLogger("flava")

STATIC = Path(__file__).with_name("static")
"""The page's files (package data)."""
_IMAGE_TYPES = ("image/", "application/octet-stream")


class Refused(Exception):
    """A request answered with `status` and one sentence (busy, too large, not found)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    """The JSON every error is: {"error": one sentence}."""
    return JSONResponse({"error": message}, status_code=status)


def _size(n: int) -> str:
    """Bytes as the largest unit that keeps a whole number (10 MB, 512 KiB)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KiB", 2**10), ("KB", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413, at once when its
    Content-Length says so, else as soon as the bytes read pass the limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit
        self.message = (
            f"the upload is larger than this server's limit of {_size(limit)}; send a smaller "
            "picture (or start the server with a larger max_upload)"
        )

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await error(413, self.message)(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise Refused(413, self.message)
            return message

        await self.app(scope, limited, send)


class Workers:
    """Runs blocking calls in threads: at most `workers` at a time, `queue` more waiting."""

    def __init__(self, workers: int, queue: int) -> None:
        self.limiter = anyio.CapacityLimiter(workers)
        self.most, self.taken = workers + queue, 0

    async def run(self, call: Callable[[], Any]) -> Any:
        """`call()` in a worker thread; `Refused` (503) when the queue is full."""
        if self.taken >= self.most:
            raise Refused(
                503,
                f"the server is busy ({self.taken} queries running or waiting); try again in "
                "a moment",
            )
        self.taken += 1
        try:
            return await anyio.to_thread.run_sync(call, limiter=self.limiter)
        finally:
            self.taken -= 1


def parse_k(value: Any, default: int, most: int) -> int:
    """k from a query string, form or JSON value; `QueryError` when not a whole number in
    1..most."""
    if value is None or value == "":
        return default
    try:
        k = int(value) if not isinstance(value, bool | float) else None
    except (TypeError, ValueError):
        k = None
    if k is None:
        raise QueryError(f"k={value!r} is not a whole number; ask for 1 to {most} results")
    if not 1 <= k <= most:
        raise QueryError(f"k={k} is out of range; ask for 1 to {most} results")
    return k


def _answer(service: SearchService, query: dict, k: int, found: list, start: float) -> dict:
    """The JSON of a search: the query, k, its time and the results with thumbnail URLs."""
    v = service.generation
    results = [{**r.to_dict(), "thumbnail": f"/api/thumbnail/{r.id}?v={v}"} for r in found]
    took = round((time.perf_counter() - start) * 1000, 2)
    return {"query": query, "k": k, "took_ms": took, "results": results}


def _handlers(app: FastAPI) -> None:
    """Every error as {"error": one sentence} with its status."""

    @app.exception_handler(CollectionError)
    async def collection_error(request: Request, exc: CollectionError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error(exc.status, str(exc))

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        messages = {
            404: f"there is no {request.url.path} here; the page is / and the API /api/...",
            405: f"{request.method} is not allowed on {request.url.path}",
        }
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server's log")


async def _picture(request: Request) -> tuple[bytes, Any]:
    """(the uploaded picture's bytes, the k the form gives) of an image query."""
    kind = request.headers.get("content-type", "")
    if kind.startswith(_IMAGE_TYPES):
        return await request.body(), None
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise QueryError(
            "no picture was sent; upload it as the form field 'image' (multipart/form-data) "
            "or send its bytes with an image/* Content-Type"
        )
    return await upload.read(), form.get("k")


def _routes(app: FastAPI, service: SearchService, settings: ServeRunConfig) -> None:
    """The page, health, search and thumbnail endpoints."""
    queries = Workers(settings.workers, settings.queue)
    others = Workers(4, 256)  # health and thumbnails: file reads, never the model

    def k_of(value: Any) -> int:
        return parse_k(value, settings.k, settings.max_k)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health")
    async def health() -> dict:
        info = await others.run(service.info)
        limits = {"max_k": settings.max_k, "max_upload": parse_bytes(settings.max_upload)}
        return {**info, "k": settings.k, **limits}

    async def text_search(q: Any, k: Any) -> dict:
        start = time.perf_counter()
        k = k_of(k)
        text = q if isinstance(q, str) else ""
        found = await queries.run(lambda: service.searcher().search_text(text, k))
        return _answer(service, {"text": text}, k, found, start)

    @app.get("/api/search")
    async def search_get(request: Request) -> dict:
        params = request.query_params
        return await text_search(params.get("q"), params.get("k"))

    @app.post("/api/search")
    async def search_post(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise QueryError('the body is not a JSON object; send {"q": "a red bus", "k": 10}')
        return await text_search(body.get("q"), body.get("k"))

    @app.post("/api/search/image")
    async def search_image(request: Request) -> dict:
        start = time.perf_counter()
        data, form_k = await _picture(request)
        k = k_of(request.query_params.get("k", form_k))
        found = await queries.run(lambda: service.searcher().search_image(data, k))
        return _answer(service, {"image": f"{len(data)} bytes"}, k, found, start)

    @app.get("/api/thumbnail/{ident}")
    async def thumbnail(ident: str) -> Response:
        if not ident.isdigit():
            raise QueryError(f"{ident!r} is not a record id; ids are whole numbers from 0")
        size = settings.thumbnail_size
        thumb = await others.run(lambda: service.thumbnail(int(ident), size))
        headers = {
            "Cache-Control": "max-age=3600",
            "X-Thumbnail": "placeholder" if thumb.placeholder else "image",
        }
        return Response(thumb.data, media_type=thumb.media_type, headers=headers)


def create_app(service: SearchService, settings: ServeRunConfig) -> FastAPI:
    """The app serving `service` with the limits of `settings`."""
    app = FastAPI(  # no interactive docs: they load scripts from a CDN; the schema is served
        title="flava search", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json"
    )
    app.state.service = service
    _handlers(app)
    _routes(app, service, settings)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    limit = given(parse_bytes(settings.max_upload), "max_upload: give a size, e.g. 10MB")
    app.add_middleware(BodyLimit, limit=limit)
    return app
