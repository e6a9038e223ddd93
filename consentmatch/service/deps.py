"""What the routes depend on: the app's gallery, the caller by role, answers, paging, replays.

Roles are FastAPI dependencies (`role("enroller")`) over `HTTPBearer`, so OpenAPI declares the
bearer scheme on every call that needs a key; the check itself is `auth.caller`, which also
takes the console's session cookie. A refused role or purpose, or a session's change without
its CSRF token (403), is audited here, once for every route, under the route's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ..audit import ACTIONS
from ..consent import parse_expiry
from ..errors import InvalidArgumentError, PermissionDeniedError
from ..gallery import Gallery
from ..services import access
from ..text import check_text
from .auth import Caller, RateLimiter, caller

__all__ = ["ANONYMOUS", "BEARER", "NO_STORE", "PURPOSE_CHARS", "Paging", "audit_refusal", "caller_first", "date", "fingerprint", "gallery_of",
           "idempotent", "json_answer", "listing", "role", "searcher"]

NO_STORE = {"Cache-Control": "no-store"}
#: The audit actor of a call refused before any key was checked (a cross-site sign-in): the
#: service's own word for "no key", in the `kind:name` form of `local:<OS user>`.
ANONYMOUS = "service:anonymous"
#: The audit action of a refused call, by route name, where the two differ; a route that names no
#: action (a read: the audit trail, the keys) is recorded as "call" (its `details.call` says which).
_REFUSED_ACTIONS = {
    "grant": "consent-grant", "revoke": "consent-revoke", "create-apikey": "apikey-create",
    "revoke-apikey": "apikey-revoke", "set-policy": "policy-set", "declare": "purpose-add",
    "withdraw": "purpose-remove", "approve": "request-approve", "deny": "request-deny",
}
#: The bearer scheme OpenAPI declares; `auth.caller` reads the header itself (or the session cookie),
#: so a missing or wrong key is the service's own 401 problem, not FastAPI's.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", bearerFormat="cm_<id>_<secret>",
                    description="An API key from `consentmatch apikey create` (the console sends its session "
                                "cookie and CSRF token instead).")
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
#: The roles each key-checking dependency asks for, by the dependency (`caller_first` looks them up).
_GUARDS: dict[Callable[..., Any], tuple[str, ...]] = {}
#: The longest purpose the search routes take (their form's `max_length`, routes/search.py).
PURPOSE_CHARS = 64


def gallery_of(request: Request) -> Gallery:
    """The gallery the app serves (`create_app` keeps it in `app.state`)."""
    gallery: Gallery = request.app.state.gallery
    return gallery


def _limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def audit_refusal(request: Request, error: PermissionDeniedError, actor: str, purpose: str | None = None,
                  details: dict[str, str] | None = None) -> None:
    """Record a refused call (a 403) under its route's action: who tried what, and why (the error's
    message: never a key or a session's secret)."""
    route = request.scope.get("route")
    action = getattr(route, "name", "call").replace("_", "-")
    action = _REFUSED_ACTIONS.get(action, action if action in ACTIONS else "call")  # else the store drops it
    gallery_of(request).context.record_refusal(
        action, request.path_params.get("subject"), purpose, actor, error,
        {"call": f"{request.method} {getattr(route, 'path', request.url.path)}", **(details or {})})


def _checked(request: Request, roles: tuple[str, ...], purpose: str | None = None) -> Caller:
    """The authenticated caller, holding one of `roles` (any key, when none) and allowed `purpose`.
    Every 403 is audited here: a role or purpose refused, and a console session's change without
    its CSRF token (refused inside `caller`, under the session's key name)."""
    found: Caller | None = None
    try:
        found = caller(request, gallery_of(request), _limiter(request))
        request.state.caller = found  # known: a later refusal of what the call sent may come (app.py)
        if roles:
            found.require(*roles, purpose=purpose)
    except PermissionDeniedError as exc:  # audited like every refusal: who tried what
        actor = found.name if found is not None else getattr(exc, "key_name", ANONYMOUS)
        audit_refusal(request, exc, actor, purpose)
        raise
    return found


def role(*roles: str) -> Any:
    """A dependency giving the caller, who must hold one of `roles` (none named: any active key)."""

    def dependency(request: Request, _: _Credentials) -> Caller:
        return _checked(request, roles)

    _GUARDS[dependency] = roles
    return Depends(dependency)


async def searcher(request: Request, _: _Credentials) -> Caller:
    """The dependency of match and verify: an operator whose key may search for the form's `purpose`.

    It declares no form field, so nothing the form holds is validated before the key and its role
    (a missing purpose was 422 before a missing key's 401). The purpose is read from the form
    FastAPI has already parsed, the one the route gets; one the route refuses anyway (missing,
    not text, over 64 characters) is left to its 422, so no such text reaches the audit trail."""
    purpose = (await request.form()).get("purpose")
    wanted = purpose if isinstance(purpose, str) and len(purpose) <= PURPOSE_CHARS else None
    return await run_in_threadpool(_checked, request, ("operator",), wanted)  # scrypt, the store: off the loop


async def caller_first(request: Request) -> None:
    """Before a refusal of what a call sent (422, or 400 for a body that cannot be parsed): its key
    and role, when its route needs them and they were not checked yet. FastAPI reads the body before
    any dependency, so a body that is not JSON was refused before the key was looked at; README
    promises 401 or 403 however malformed the rest. Raises that 401, 403 (audited) or 429."""
    if getattr(request.state, "caller", None) is not None:
        return
    roles = _roles_of(getattr(request.scope.get("route"), "dependant", None))
    if roles is not None:
        await run_in_threadpool(_checked, request, roles)


def _roles_of(dependant: Any) -> tuple[str, ...] | None:
    for needed in getattr(dependant, "dependencies", ()):
        roles = _GUARDS.get(needed.call) if needed.call is not None else None
        if roles is None:
            roles = _roles_of(needed)
        if roles is not None:
            return roles
    return None


_GUARDS[searcher] = ("operator",)


def json_answer(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """An answer of the API: JSON, never cached."""
    return JSONResponse(data, status_code=status, headers={**NO_STORE, **(headers or {})})


class Paging:
    """`limit` and `offset` of a list: none given, the whole list, as before paging existed."""

    def __init__(
        self,
        limit: Annotated[int | None, Query(ge=1, le=100_000, description="At most this many items (default: all)")]
        = None,
        offset: Annotated[int, Query(ge=0, description="Skip this many items first")] = 0,
    ) -> None:
        self.limit, self.offset = limit, offset


def listing(items: list[Any], page: Paging) -> JSONResponse:
    """A list answer, `page` of it; a paged one says the whole list's length in `X-Total-Count`."""
    if page.limit is None and page.offset == 0:
        return json_answer(items)
    end = None if page.limit is None else page.offset + page.limit
    return json_answer(items[page.offset:end], headers={"X-Total-Count": str(len(items))})


def fingerprint(*parts: bytes) -> str:
    """The digest of a request, for its Idempotency-Key (stored keyed by `access.answer_once`)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def idempotent(gallery: Gallery, found: Caller, key: str | None, digest: str,
               run: Callable[[], JSONResponse]) -> Response:
    """Answer a retried call (same Idempotency-Key, same request) with its first answer."""
    if key is None:
        return run()
    key = check_text(key, "Idempotency-Key")

    def answered() -> tuple[int, str]:
        answer = run()
        return answer.status_code, bytes(answer.body).decode()

    status, body = access.answer_once(gallery.context, found.name, key, digest, answered)
    return Response(body, status_code=status, media_type="application/json", headers=NO_STORE)


def date(text: str | None, what: str) -> datetime | None:
    """A YYYY-MM-DD field (an expiry), None when empty."""
    if text is None or not text.strip():
        return None
    try:
        return parse_expiry(text)
    except ValueError:
        raise InvalidArgumentError(f"{what} {text!r} is not a date: write YYYY-MM-DD.") from None
