"""The operator console: a page at `/` for the people at the desk, over the same /v1 endpoints.

The page (static/index.html, console.js, console.css, package data) is plain HTML with a little
JavaScript; everything it does is a /v1 call the API already answers, and the server checks the
role of every call whatever the page shows. What this module adds is the sign-in: an API key
exchanged for a session cookie (`sessions.py`), and the headers that keep the page to itself:
a Content-Security-Policy of its own origin only, no caching, no framing, no referrer.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..errors import PermissionDeniedError
from ..gallery import Gallery
from ..text import visible
from .auth import Caller, RateLimiter, authenticated
from .deps import ANONYMOUS, audit_refusal, role
from .schemas import SessionOut, problems
from .sessions import SESSION_COOKIE, Sessions

__all__ = ["CSP", "mount_console"]

#: The page may load and call only its own origin; photos it shows are blob: URLs it made itself.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; media-src 'self' blob:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}
#: The console's files, by the name the page asks for, with their media types.
_FILES = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
          "console.css": "text/css; charset=utf-8"}


class SignIn(BaseModel):
    """An API key to exchange for a session."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"key": "cm_0123456789abcdef_..."}]})

    key: str = Field(min_length=1, max_length=200)


def _file(name: str) -> bytes:
    return resources.files(__package__ or "consentmatch.service").joinpath("static", name).read_bytes()


def _same_origin(request: Request) -> None:
    """A sign-in from another site's page (login CSRF) is refused by its Origin header."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise PermissionDeniedError("Sign-in is accepted only from the console's own page: open the console "
                                    "at this server's address.")


def mount_console(app: FastAPI, gallery: Gallery, limiter: RateLimiter) -> None:
    """Serve the console at `/` and its sign-in at /v1/session; sessions are kept in `app.state`."""
    sessions = Sessions()
    app.state.sessions = sessions
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(_file("index.html"), media_type=_FILES["index.html"], headers=_PAGE_HEADERS)

    @router.get("/console/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in _FILES or name == "index.html":
            return Response(status_code=404, headers=_PAGE_HEADERS)
        return Response(_file(name), media_type=_FILES[name], headers=_PAGE_HEADERS)

    @router.post("/v1/session", status_code=201, tags=["session"], response_model=SessionOut,
                 summary="Sign in: exchange an API key for a session cookie (the console)",
                 responses=problems(401, 403, 422, 429))
    def sign_in(request: Request, body: SignIn) -> Response:
        try:
            _same_origin(request)
        except PermissionDeniedError as exc:  # audited like every 403; no key is known yet (none is checked)
            address = request.client.host if request.client else "unknown"
            limiter.check_failures(None, address)  # an address refused too often: 429, and nothing more written
            limiter.failed(None, address)
            origin = visible(request.headers.get("origin", "")[:200])  # the sender's text: no hidden character
            audit_refusal(request, exc, ANONYMOUS, details={"origin": origin})
            raise
        key = authenticated(request, gallery, limiter, body.key)
        limiter.take(key.name, key.rate_limit or int(gallery.policy()["rate_limit"]))
        session_id, session = sessions.start(key)
        answer = JSONResponse({"key": key.to_dict(), **sessions.times(session), "csrf_token": session.csrf},
                              status_code=201, headers={"Cache-Control": "no-store"})
        sessions.set_cookies(request, answer, session_id, session)
        return answer

    @router.get("/v1/session", tags=["session"], summary="The signed-in key and when the session ends",
                response_model=SessionOut, responses=problems(401, 429))
    def current(request: Request, found: Annotated[Caller, role()]) -> Response:
        session = sessions.find(request.cookies.get(SESSION_COOKIE))
        times = sessions.times(session) if session is not None else {"expires_at": None}
        return JSONResponse({"key": found.key.to_dict(), **times}, headers={"Cache-Control": "no-store"})

    @router.delete("/v1/session", status_code=204, tags=["session"], summary="Sign out: the session ends now",
                   responses=problems(401, 403, 429))
    def sign_out(request: Request, _: Annotated[Caller, role()]) -> Response:  # a forged sign-out (no CSRF token)
        # is refused by the role dependency, like any change
        sessions.end(request.cookies.get(SESSION_COOKIE))
        answer = Response(status_code=204, headers={"Cache-Control": "no-store"})
        sessions.clear_cookies(request, answer)
        return answer

    app.include_router(router)
