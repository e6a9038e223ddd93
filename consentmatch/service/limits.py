"""How much photo work the service takes on at once: a fixed number of slots per process.

A photo is small on the wire and large once decoded: a legal 40-megapixel PNG of 0.3 MB holds
~0.4 GB while it is decoded and searched. Without a bound, a few such uploads at once take the
process's memory, whoever sends them. `PhotoSlots` lets `slots` requests with photo work run
(the uploads: multipart requests; an approval, which runs the held search) and answers the
next one at once with a 503 problem and `Retry-After`, as AWS Rekognition throttles: the client
retries, nothing queues up in memory. The body is read before a slot is taken, so a slow upload
never holds one.

Whether a request is an upload is decided from the Content-Type header, which Starlette parses
by its first occurrence: a request with two (the first multipart, the last text/plain, which
`dict(headers)` keeps) was decoded as an upload and never took a slot. So a request with more
than one Content-Type header is refused with 400 before anything else (RFC 9110 allows one), and
any multipart one counts as photo work.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ServiceBusyError
from .problems import problem, problem_for

__all__ = ["PhotoSlots", "RETRY_AFTER_S"]

#: What a busy answer suggests: about the time one photo's work takes.
RETRY_AFTER_S = 2


def _content_types(scope: Scope) -> list[bytes]:
    return [value.strip().lower() for name, value in scope.get("headers") or [] if name.lower() == b"content-type"]


def _photo_work(scope: Scope) -> bool:
    if scope["method"] != "POST":
        return False
    return (any(kind.startswith(b"multipart/form-data") for kind in _content_types(scope))
            or str(scope["path"]).endswith("/approve"))


class PhotoSlots:
    """At most `slots` requests doing photo work at once; another is answered 503 (`ServiceBusyError`)."""

    def __init__(self, app: ASGIApp, slots: int) -> None:
        self.app, self.slots, self.busy = app, max(1, slots), 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(_content_types(scope)) > 1:  # which one is the body? refused, unread
            await problem(400, f"The request has {len(_content_types(scope))} Content-Type headers: send exactly "
                               "one.")(scope, receive, send)
            return
        if scope["type"] != "http" or not _photo_work(scope):
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        while True:  # the whole body first (the body limit outside bounds it)
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        if self.busy >= self.slots:  # one event loop: no lock needed between the check and the count
            busy = ServiceBusyError(f"The service is working on {self.busy} photos, as many as it may at once: "
                                    f"retry in {RETRY_AFTER_S} s.", RETRY_AFTER_S)
            await problem_for(busy)(scope, replay, send)
            return
        self.busy += 1
        try:
            await self.app(scope, replay, send)
        finally:
            self.busy -= 1
