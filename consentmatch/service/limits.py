"""How much photo work the service takes on at once: a fixed number of slots per process.

A photo is small on the wire and large once decoded: a legal 40-megapixel PNG of 0.3 MB holds
~0.4 GB while it is decoded and searched. Without a bound, a few such uploads at once take the
process's memory, whoever sends them. `PhotoSlots` lets `slots` requests with photo work run
(the uploads: multipart requests; an approval, which runs the held search) and answers the
next one at once with a 503 problem and `Retry-After`, as AWS Rekognition throttles: the client
retries, nothing queues up in memory. The body is read before a slot is taken, so a slow upload
never holds one.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ServiceBusyError
from .problems import problem_for

__all__ = ["PhotoSlots", "RETRY_AFTER_S"]

#: What a busy answer suggests: about the time one photo's work takes.
RETRY_AFTER_S = 2


def _photo_work(scope: Scope) -> bool:
    if scope["method"] != "POST":
        return False
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"").lower()
    return content_type.startswith(b"multipart/form-data") or str(scope["path"]).endswith("/approve")


class PhotoSlots:
    """At most `slots` requests doing photo work at once; another is answered 503 (`ServiceBusyError`)."""

    def __init__(self, app: ASGIApp, slots: int) -> None:
        self.app, self.slots, self.busy = app, max(1, slots), 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
