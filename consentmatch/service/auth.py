"""Who is calling: the bearer key checked by the gallery (or the console's session cookie,
`sessions.py`), its role and purposes, its rate; and the rate of failed attempts.

A route names the roles it accepts (`Allow`); the key must hold one of them. The audit actor of
every call is the key's name (`Caller.name`), never a header or field the caller chooses.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from fastapi import Request

from ..errors import AuthenticationError, PermissionDeniedError, RateLimitError
from ..gallery import Gallery
from ..results import ApiKeyInfo
from ..services import access
from ..services.access import key_id
from .sessions import Sessions

__all__ = ["FAILED_PER_ADDRESS", "FAILED_PER_KEY_ID", "Caller", "RateLimiter", "authenticated", "bearer", "caller"]

#: Failed authentications a minute, per key id and per client address, before the service answers
#: 429 without checking (so a guesser costs it no scrypt). Per service process, like the rates.
FAILED_PER_KEY_ID = 10
FAILED_PER_ADDRESS = 30
_MAX_BUCKETS = 100_000  # past this many, full buckets are dropped: random ids must not grow memory without end


@dataclass(frozen=True)
class Caller:
    """The key a request was made with."""

    key: ApiKeyInfo

    @property
    def name(self) -> str:
        return self.key.name

    def has(self, *roles: str) -> bool:
        return any(role in self.key.roles for role in roles)

    def require(self, *roles: str, purpose: str | None = None) -> None:
        """PermissionDeniedError unless the key holds one of `roles` (and may search for `purpose`)."""
        if not self.has(*roles):
            raise PermissionDeniedError(f"The API key '{self.name}' lacks the role this call needs "
                                        f"({' or '.join(roles)}): ask an administrator for a key that has it.")
        if purpose is not None and self.key.purposes and purpose not in self.key.purposes:
            raise PermissionDeniedError(f"The API key '{self.name}' may not search for purpose '{purpose}': "
                                        f"its purposes are {', '.join(self.key.purposes)}.")


class RateLimiter:
    """A token bucket per key name, in this process: `per_minute` requests, refilled evenly; and
    one per key id and per client address for failed authentications (`failed`, `check_failures`)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._failures: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check_failures(self, public_id: str | None, address: str) -> None:
        """RateLimitError when the key id or the address has failed too often of late."""
        now = time.monotonic()
        with self._lock:
            for what, name, limit in self._failure_buckets(public_id, address):
                tokens = self._refilled(self._failures, name, limit, now)
                if tokens < 1:
                    wait = math.ceil((1 - tokens) * 60 / limit)
                    raise RateLimitError(f"Too many failed authentications {what}: retry in {wait} s with a valid "
                                         "API key.", retry_after=wait)

    def failed(self, public_id: str | None, address: str) -> None:
        """Count a failed authentication against the key id (when well formed) and the address."""
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > _MAX_BUCKETS:
                self._failures = {k: v for k, v in self._failures.items() if v[0] + (now - v[1]) < FAILED_PER_KEY_ID}
            for _, name, limit in self._failure_buckets(public_id, address):
                self._failures[name] = (self._refilled(self._failures, name, limit, now) - 1, now)

    @staticmethod
    def _failure_buckets(public_id: str | None, address: str) -> list[tuple[str, str, int]]:
        buckets = [("from this address", f"address:{address}", FAILED_PER_ADDRESS)]
        if public_id is not None:
            buckets.append(("for this key id", f"id:{public_id}", FAILED_PER_KEY_ID))
        return buckets

    @staticmethod
    def _refilled(buckets: dict[str, tuple[float, float]], name: str, limit: int, now: float) -> float:
        tokens, then = buckets.get(name, (float(limit), now))
        return min(float(limit), tokens + (now - then) * limit / 60)

    def take(self, name: str, per_minute: int) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(name, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - then) * per_minute / 60)
            if tokens < 1:
                wait = math.ceil((1 - tokens) * 60 / per_minute)
                self._buckets[name] = (tokens, now)
                raise RateLimitError(f"The API key '{name}' is over its rate of {per_minute} requests a minute: "
                                     f"retry in {wait} s.", retry_after=wait)
            self._buckets[name] = (tokens - 1, now)


def bearer(request: Request) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, if any."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticated(request: Request, gallery: Gallery, limiter: RateLimiter, presented: str | None) -> ApiKeyInfo:
    """`services/access.authenticate`, unless the key id or the client address failed too often: then 429
    instead of a scrypt (a key already checked in this process needs none and passes). A
    failure is counted against both."""
    public_id, address = key_id(presented), request.client.host if request.client else "unknown"
    try:
        return access.authenticate(gallery.context, presented, lambda: limiter.check_failures(public_id, address))
    except AuthenticationError:
        limiter.failed(public_id, address)
        raise


def caller(request: Request, gallery: Gallery, limiter: RateLimiter) -> Caller:
    """Authenticate the request's key (AuthenticationError otherwise) and count it against its
    rate: its own, else the gallery policy's `rate_limit`. Without a bearer key, the console's
    session cookie stands for the key it was signed in with (its CSRF token checked)."""
    presented = bearer(request)
    sessions = getattr(request.app.state, "sessions", None)
    if presented is None and isinstance(sessions, Sessions):
        key = sessions.authenticate(request, gallery)
    else:
        key = authenticated(request, gallery, limiter, presented)
    limiter.take(key.name, key.rate_limit or int(gallery.policy()["rate_limit"]))
    return Caller(key)
