"""Who is calling: the bearer key checked by the gallery, its role and purposes, its rate.

A route names the roles it accepts (`Allow`); the key must hold one of them. The audit actor of
every call is the key's name (`Caller.name`), never a header or field the caller chooses.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from fastapi import Request

from ..errors import PermissionDeniedError, RateLimitError
from ..gallery import Gallery
from ..results import ApiKeyInfo

__all__ = ["Caller", "RateLimiter", "bearer", "caller"]


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

    def require_purpose_named(self, purpose: str | None) -> None:
        """A key limited to some purposes must name one: "any purpose" would reach past its limit."""
        if purpose is None and self.key.purposes:
            raise PermissionDeniedError(f"The API key '{self.name}' may search only for {', '.join(self.key.purposes)}: "
                                        "name the purpose.")


class RateLimiter:
    """A token bucket per key name, in this process: `per_minute` requests, refilled evenly."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

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


def caller(request: Request, gallery: Gallery, limiter: RateLimiter) -> Caller:
    """Authenticate the request's key (AuthenticationError otherwise) and count it against its
    rate: its own, else the gallery policy's `rate_limit`."""
    key = gallery.authenticate(bearer(request))
    limiter.take(key.name, key.rate_limit or int(gallery.policy()["rate_limit"]))
    return Caller(key)
