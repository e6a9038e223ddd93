"""How `consentmatch serve` runs the app: uvicorn, guarded against slow and idle connections.

uvicorn closes a connection that idles between requests (`timeout_keep_alive`) but waits forever
for the first request's headers, and accepts connections until the process runs out of file
descriptors: a few thousand sockets that send half a request line ("slowloris") stop the
service. `GuardedH11` adds what nginx calls `client_header_timeout` and `worker_connections`:
a connection must send its request line and headers within `header_timeout` seconds of opening
(or of its previous answer), whatever it trickles, may not pause longer than that inside a
request body nor send it slower than `MIN_BODY_RATE` on average (Apache's mod_reqtimeout
`body=...,MinRate=500`: a body trickled a byte every few seconds would otherwise hold its
connection forever, and a thousand of them the cap), and at most `max_connections` are open; at
the cap, the connection that has waited longest without a request is closed to make room, so a
real caller still gets in. Closed connections are counted and logged once a minute, never one
line each (`RateLimitedLog` does the same for uvicorn's own warnings).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from ..settings import Settings

__all__ = ["GuardedH11", "RateLimitedLog", "guarded_protocol", "run"]

_log = logging.getLogger("uvicorn.error")
#: File descriptors kept beyond the connection cap: the listening socket, the store, the models, logs.
_SPARE_FDS = 128
#: Bytes a second a request body must average once `header_timeout` has passed (mod_reqtimeout's MinRate).
MIN_BODY_RATE = 500


class RateLimitedLog(logging.Filter):
    """Let the same message through at most `burst` times a `window`; then one line saying how
    many were held back. A flood of bad requests must not become a flood of log lines."""

    def __init__(self, window: float = 60.0, burst: int = 5) -> None:
        super().__init__()
        self.window, self.burst = window, burst
        self._seen: dict[str, tuple[float, int, int]] = {}  # message -> (window start, passed, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if record.name == "asyncio" and record.exc_info:
            # the loop's own accept() errors under a flood (EMFILE, ECONNABORTED): one line, no traceback
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args, record.exc_info, record.exc_text = None, None, None
        key = str(record.msg)[:200]
        now = time.monotonic()
        start, passed, held = self._seen.get(key, (now, 0, 0))
        if now - start >= self.window:
            if held:
                record.msg = f"{record.msg} ({held} more like it in the last {self.window:.0f} s were not logged)"
            start, passed, held = now, 0, 0
        if passed < self.burst:
            self._seen[key] = (start, passed + 1, held)
            if len(self._seen) > 1000:  # bounded: forget the oldest message kinds
                self._seen.pop(next(iter(self._seen)))
            return True
        self._seen[key] = (start, passed, held + 1)
        return False


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers and a connection cap.

    `waiting` (per server, set by `guarded_protocol`) holds the connections that have no request
    in progress, oldest first: those are the ones a deadline or the cap may close.
    """

    header_timeout: float = 10.0
    max_connections: int = 1000
    waiting: OrderedDict[GuardedH11, None]
    closed: dict[str, int]

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._body_started: float | None = None
        self._body_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            oldest = next(iter(self.waiting), None)
            if oldest is None:  # every connection is inside a request: refuse this one
                self._close("over the connection cap")
                return
            oldest._close("over the connection cap")
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:  # headers in, body coming: a pause as long as the header deadline closes it,
            self._stop_waiting()  # and so does a body slower on average than MIN_BODY_RATE
            now = self.loop.time()
            if self._body_started is None:
                self._body_started, self._body_bytes = now, 0
            self._body_bytes += len(data)
            allowed = self._body_started + self.header_timeout + self._body_bytes / MIN_BODY_RATE
            self._deadline = self.loop.call_later(min(self.header_timeout, max(0.0, allowed - now)),
                                                  self._expired, "a stalled request body")
        elif state is not h11.IDLE:  # the whole request is in (or refused): nothing to wait for
            self._stop_waiting()
            self._body_started = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_headers()  # keep-alive: the next request gets the same deadline

    def _await_headers(self) -> None:
        self._stop_waiting()
        self._body_started = None
        self.waiting[self] = None
        self._deadline = self.loop.call_later(self.header_timeout, self._expired, "no request headers in time")

    def _expired(self, why: str) -> None:
        self._deadline = None
        if self.flow.read_paused:  # we stopped reading, not the client: wait again
            if self._body_started is not None:  # and measure the body's rate afresh
                self._body_started, self._body_bytes = self.loop.time(), 0
            self._deadline = self.loop.call_later(self.header_timeout, self._expired, why)
            return
        self._close(why)

    def _stop_waiting(self) -> None:
        self.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close(self, why: str) -> None:
        self._stop_waiting()
        if not self.transport.is_closing():
            self.transport.close()
        self.closed[why] = self.closed.get(why, 0) + 1


def guarded_protocol(settings: Settings) -> type[GuardedH11]:
    """A `GuardedH11` class with this server's limits and its own registry of waiting connections."""
    return type("GuardedH11", (GuardedH11,), {
        "header_timeout": settings.header_timeout, "max_connections": settings.max_connections,
        "waiting": OrderedDict(), "closed": {},
    })


def _backlog(cap: int) -> int:
    """The listen backlog: asyncio accepts up to this many at once before the cap sees them."""
    return min(2048, max(64, cap // 2))


def _fit_descriptors(wanted: int) -> int:
    """Raise the soft limit on open files toward what `wanted` connections need (each accept burst
    and a spare included); the connection cap that fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + _backlog(wanted) + _SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(10, (soft - _SPARE_FDS) * 2 // 3)
        _log.warning("Open files are limited to %d here: at most %d connections (raise `ulimit -n`).", soft, fitted)
        return fitted
    return wanted


async def _report(protocol: type[GuardedH11], every: float = 60.0) -> None:
    """Once a minute, one line for the connections the guard closed (none: nothing)."""
    while True:
        await asyncio.sleep(every)
        if protocol.closed:
            counts = ", ".join(f"{n} {why}" for why, n in sorted(protocol.closed.items()))
            protocol.closed.clear()
            _log.warning("Closed connections in the last %.0f s: %s.", every, counts)


def run(app: Any, host: str, port: int, settings: Settings, log_config: dict[str, Any]) -> None:
    """Serve `app` on host:port until interrupted, with the limits of `settings`."""
    import uvicorn

    cap = _fit_descriptors(settings.max_connections)
    protocol = guarded_protocol(settings.replace(max_connections=cap))
    config = uvicorn.Config(app, host=host, port=port, log_level="info", log_config=log_config, server_header=False,
                            http=protocol, timeout_keep_alive=max(1, round(settings.keep_alive)),
                            backlog=_backlog(cap))
    server = uvicorn.Server(config)
    limiter = RateLimitedLog()
    for name in ("uvicorn.error", "asyncio"):
        logging.getLogger(name).addFilter(limiter)

    async def serve() -> None:
        reporter = asyncio.ensure_future(_report(protocol))
        try:
            await server.serve()
        finally:
            reporter.cancel()

    asyncio.run(serve())
