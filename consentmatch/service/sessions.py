"""Console sessions: an API key exchanged once for a cookie, and the CSRF check that goes with it.

Sessions live in this process's memory, each under a random 256-bit id, mapped to the key's
name and creation time (never the key itself): a restart signs everyone out, and a key
revoked, expired or replaced under the same name ends its sessions at the next request,
because every request reads the key's row again. A session ends after `idle` seconds without
a request, `lifetime` seconds after sign-in (one shift) or at sign-out.

The session cookie is HttpOnly, SameSite=Strict, Path=/, Secure when the request came over
https. A request that authenticates by the cookie and changes something (any method but GET,
HEAD, OPTIONS) must also send the session's own CSRF token in `X-CSRF-Token`; the page reads it
from a second, script-readable cookie (double submit, checked against the token kept in the
session, not merely against the cookie). A bearer-key call needs none: a browser never adds that
header to a forged cross-site request.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from fastapi import Request, Response

from ..errors import AuthenticationError, PermissionDeniedError
from ..gallery import Gallery
from ..results import ApiKeyInfo

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "SESSION_COOKIE", "Session", "Sessions"]

SESSION_COOKIE = "cm_session"
CSRF_COOKIE = "cm_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: At most this many live sessions per process: sign-ins past it push out the oldest.
MAX_SESSIONS = 10_000


class _CsrfRefused(PermissionDeniedError):
    """A change without the session's CSRF token; `key_name`, the session's key, is the audit's actor
    (deps.py records it). Private: problems and the audit trail name it PermissionDeniedError."""

    def __init__(self, message: str, key_name: str) -> None:
        super().__init__(message)
        self.key_name = key_name


@dataclass(frozen=True)
class Session:
    """One signed-in browser: whose key, its CSRF token, and when it ends."""

    key_name: str
    key_created: datetime
    csrf: str
    started: float
    seen: float

    def ends(self, lifetime: float, idle: float) -> float:
        return min(self.started + lifetime, self.seen + idle)


class Sessions:
    """The sessions of one service process."""

    def __init__(self, *, lifetime: float = 8 * 3600, idle: float = 30 * 60,
                 clock: Callable[[], float] = time.time) -> None:
        self.lifetime, self.idle, self.clock = lifetime, idle, clock
        self._live: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, key: ApiKeyInfo) -> tuple[str, Session]:
        """A new session for an authenticated key: (its id, the session)."""
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(key.name, key.created_at, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._live = {i: s for i, s in self._live.items() if s.ends(self.lifetime, self.idle) > now}
            while len(self._live) >= MAX_SESSIONS:
                del self._live[next(iter(self._live))]
            self._live[session_id] = session
        return session_id, session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._live.pop(session_id or "", None)

    def find(self, session_id: str | None) -> Session | None:
        """The live session of this id, its idle clock restarted; None if unknown or over."""
        now = self.clock()
        with self._lock:
            session = self._live.get(session_id or "")
            if session is None:
                return None
            if session.ends(self.lifetime, self.idle) <= now:
                del self._live[session_id or ""]
                return None
            seen = self._live[session_id or ""] = replace(session, seen=now)
            return seen

    def expires_at(self, session: Session) -> datetime:
        """When the session ends if no request comes before: its idle deadline (or its lifetime's end)."""
        return datetime.fromtimestamp(session.ends(self.lifetime, self.idle), timezone.utc)

    def ends_by(self, session: Session) -> datetime:
        """When the session ends however busy it is: sign-in plus the lifetime (one shift)."""
        return datetime.fromtimestamp(session.started + self.lifetime, timezone.utc)

    def times(self, session: Session) -> dict[str, object]:
        """The session's deadlines as the sign-in and session answers give them."""
        return {"expires_at": self.expires_at(session).isoformat(), "ends_by": self.ends_by(session).isoformat(),
                "idle_timeout_s": int(self.idle)}

    def authenticate(self, request: Request, gallery: Gallery) -> ApiKeyInfo:
        """The key behind the request's session cookie, its CSRF token checked on a change.

        Raises:
            AuthenticationError: no session, or one that is over, or whose key is no longer active.
            PermissionDeniedError: a state-changing request without the session's CSRF token.
        """
        session_id = request.cookies.get(SESSION_COOKIE)
        session = self.find(session_id)
        if session is None:
            raise AuthenticationError("No valid API key or session: sign in again on the console, or send "
                                      "'Authorization: Bearer <key>'.")
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise _CsrfRefused("This change came with the console's session cookie but without its CSRF token "
                                   "(X-CSRF-Token): reload the console and try again.", session.key_name)
        key = next((k for k in gallery.api_keys()
                    if k.name == session.key_name and k.created_at == session.key_created), None)
        if key is None or not key.active(datetime.now(timezone.utc)):
            self.end(session_id)
            raise AuthenticationError(f"The API key '{session.key_name}' of this session was revoked or has "
                                      "expired: sign in again with an active key.")
        return key

    def set_cookies(self, request: Request, response: Response, session_id: str, session: Session) -> None:
        """The session cookie (HttpOnly) and its CSRF token (readable by the page), both Strict."""
        secure = request.url.scheme == "https"
        age = int(self.lifetime)
        response.set_cookie(SESSION_COOKIE, session_id, max_age=age, path="/", secure=secure, httponly=True,
                            samesite="strict")
        response.set_cookie(CSRF_COOKIE, session.csrf, max_age=age, path="/", secure=secure, httponly=False,
                            samesite="strict")

    @staticmethod
    def clear_cookies(request: Request, response: Response) -> None:
        secure = request.url.scheme == "https"
        response.delete_cookie(SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="strict")
        response.delete_cookie(CSRF_COOKIE, path="/", secure=secure, httponly=False, samesite="strict")
