"""The HTTP service (`consentmatch serve`): an adapter over one `Gallery`, like the CLI.

`create_app` wires the app: the gallery and rate limiter in `app.state`, the middleware (photo
slots, body limit, security headers), the one mapping of errors to RFC 9457 problems, and the
routers of `routes/` (one per resource), the console and the docs. Each route takes its caller
from a role dependency (`deps.role`: bearer key or console session), calls one Gallery method
under the key's name and returns the result's `to_dict()`: the JSON of the CLI's `--json`.
FastAPI, because it is the most used ASGI stack for exactly this (typed forms and uploads, an
OpenAPI document from the code, a test client), on uvicorn.

Handlers that take uploads check the key, read the upload, then do the blocking work (the photo
work, the store) on the thread pool: the event loop never runs a model.
Photos never touch the disk: uploads are kept in memory up to the decoder's size limit (larger
bodies are refused with 413 before they are read), and nothing logs a photo or an embedding.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import ConsentMatchError
from ..gallery import Gallery
from ..images import MAX_FILE_BYTES
from ..settings import Settings
from .auth import RateLimiter
from .console import mount_console
from .deps import caller_first
from .docs import mount_docs
from .headers import SecurityHeaders
from .limits import PhotoSlots
from .problems import problem, problem_for
from .routes import ROUTERS

# The request bodies lived here before schemas.py: importable from here still.
from .schemas import ApiKeyIn as ApiKeyIn
from .schemas import ConsentIn as ConsentIn
from .schemas import DecisionIn as DecisionIn
from .schemas import PolicyIn as PolicyIn
from .schemas import PurposeIn as PurposeIn

__all__ = ["MAX_BODY_BYTES", "create_app"]

#: The largest request body: one photo at the decoder's limit, with room for the form around it.
MAX_BODY_BYTES = MAX_FILE_BYTES + 1024 * 1024
# Starlette spools uploads over 1 MiB to a temporary file: a probe photo must never reach the disk.
MultiPartParser.spool_max_size = MAX_BODY_BYTES


class _BodyLimit:
    """Refuse a request body over `limit` bytes with 413, by its Content-Length or as it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = problem(413, f"The request body is over {self.limit // (1024 * 1024)} MiB: send a smaller photo "
                                 "(downscale or re-compress it).", "ContentTooLarge")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await too_large(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(gallery: Gallery, settings: Settings | None = None) -> FastAPI:
    """The service over one open gallery (its models load at the first photo, or at `serve`'s start);
    `settings` gives its limits (`photo_slots`), the defaults when None."""
    app = FastAPI(
        docs_url=None, redoc_url=None,  # FastAPI's pages load scripts from a CDN: docs.py serves its own
        title="consentmatch", version=__version__,
        description="Consent-based face matching: a gallery that holds only faces enrolled with a recorded consent. "
                    "Every call but /v1/health and /v1/health/ready needs `Authorization: Bearer <key>` "
                    "(`consentmatch apikey create`); "
                    "errors are RFC 9457 problem details.",
    )
    app.state.gallery, app.state.limiter = gallery, RateLimiter()  # what deps.py gives the routes
    app.add_middleware(PhotoSlots, slots=(settings or Settings()).photo_slots)  # limits.py: 503 beyond them
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(SecurityHeaders)  # outermost: every answer, a refusal's too (headers.py)

    @app.exception_handler(ConsentMatchError)
    async def _library_error(request: Request, exc: ConsentMatchError) -> Response:
        return problem_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        try:
            await caller_first(request)  # 401/403 before anything about the body (deps.py)
        except ConsentMatchError as refused:
            return problem_for(refused)
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # FastAPI's own reads "Invalid 0: JSON decode error."
            at = next((p for p in first.get("loc", ()) if isinstance(p, int)), 0)
            return problem(422, f"The body is not valid JSON ({first.get('ctx', {}).get('error', 'unreadable')} at "
                                f"character {at}): send a JSON object with Content-Type: application/json.",
                           "InvalidArgumentError")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return problem(422, f"Invalid {where}: {first.get('msg', 'not accepted')}.", "InvalidArgumentError")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI's "error parsing the body", before any dependency
            try:
                await caller_first(request)
            except ConsentMatchError as refused:
                return problem_for(refused)
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:  # pragma: no cover - a bug, never data
        return problem(500, "The service failed unexpectedly: the server's log has the error (never a photo).",
                       "InternalError")

    for router in ROUTERS:  # routes/: one router per resource
        app.include_router(router)
    mount_console(app, gallery, app.state.limiter)  # the browser console at / and its sign-in (console.py)
    mount_docs(app)  # /docs and /redoc without any third-party script (docs.py)
    return app
