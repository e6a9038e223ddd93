"""The one map from the exception tree (errors.py) to HTTP: RFC 9457 problem details.

Every error answer of the service is ``application/problem+json`` with `type`, `title`,
`status` and `detail`, where `detail` is the very line the CLI prints; `error` names the class
(as the audit trail does). The first row whose class the error is an instance of wins, so
subclasses come before their bases.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.responses import JSONResponse

from ..errors import (
    AccessError,
    ApprovalRequiredError,
    AuthenticationError,
    ConsentError,
    ConsentMatchError,
    EncryptionKeyError,
    EngineError,
    FaceError,
    GalleryNotFoundError,
    ImageError,
    InvalidArgumentError,
    ManifestError,
    NoActiveEnrollmentError,
    PermissionDeniedError,
    PolicyError,
    QualityError,
    RateLimitError,
    RequestNotFoundError,
    ServiceBusyError,
    StorageError,
    SubjectNotFoundError,
    TamperingError,
    UnknownReferenceError,
)

__all__ = ["PROBLEM_JSON", "STATUS", "problem", "problem_for", "status_of", "status_table"]

PROBLEM_JSON = "application/problem+json"

#: (error class, HTTP status), most specific first.
STATUS: tuple[tuple[type[ConsentMatchError], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (RateLimitError, 429),
    (AccessError, 403),
    (ApprovalRequiredError, 422),  # answered 202 with a request when case_ref and reason are given
    (RequestNotFoundError, 404),
    (UnknownReferenceError, 404),
    (NoActiveEnrollmentError, 404),
    (SubjectNotFoundError, 404),
    (GalleryNotFoundError, 404),
    (ImageError, 400),
    (FaceError, 422),
    (ConsentError, 409),
    (PolicyError, 403),
    (ManifestError, 400),
    (InvalidArgumentError, 422),
    (ServiceBusyError, 503),
    (TamperingError, 500),
    (StorageError, 503),
    (EncryptionKeyError, 500),
    (EngineError, 500),
    (ConsentMatchError, 500),
)

_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Content Too Large", 422: "Unprocessable Content", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


#: Problems the HTTP layer answers before any library call: (`error`, status, when).
HTTP_PROBLEMS = (
    ("ContentTooLarge", "413", "the request body is over the limit (a photo at the decoder's limit and its form), "
                               "refused before it is read"),
    ("HTTPError", "400, 404, 405", "a request that cannot be read (two Content-Type headers, a body that cannot be "
                                   "parsed), no such endpoint, or not with this method"),
    ("InternalError", "500", "a bug: the server's log has the error (never a photo)"),
)


def status_table() -> str:
    """Every problem's `error`, status and meaning as a Markdown table: the README's. The library's
    errors (most specific first, as `STATUS` maps them), then the HTTP layer's own."""
    rows = [f"| `{kind.__name__}` | {status} | {_first_sentence(kind.__doc__ or '')} |" for kind, status in STATUS]
    rows += [f"| `{name}` | {status} | {when} |" for name, status, when in HTTP_PROBLEMS]
    return "\n".join(["| `error` | status | what it means |", "| --- | --- | --- |", *rows])


def _first_sentence(text: str) -> str:
    return re.split(r"\.(?:\s|$)", " ".join(text.split()), maxsplit=1)[0]


def status_of(error: ConsentMatchError) -> int:
    return next(status for kind, status in STATUS if isinstance(error, kind))


def _slug(name: str) -> str:
    """The class name in kebab case: a hyphen where a word starts, an acronym kept whole
    (`PermissionDeniedError`: permission-denied; `HTTPError`: http, not h-t-t-p)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name.removesuffix("Error") or name).lower()


def problem(status: int, detail: str, error: str = "HTTPError", **extra: Any) -> JSONResponse:
    """A problem response; `error` the class name behind it, `extra` members such as `reasons`."""
    body = {"type": f"tag:consentmatch,2026:problem:{_slug(error)}", "title": _TITLES.get(status, "Error"),
            "status": status, "detail": detail, "error": error, **extra}
    headers = {"Cache-Control": "no-store"}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra["retry_after"])
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="consentmatch"'
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_for(exc: ConsentMatchError) -> JSONResponse:
    """The problem of a library error: its status, class and one-line message."""
    kind = next(c.__name__ for c in type(exc).__mro__ if not c.__name__.startswith("_"))
    extra: dict[str, Any] = {}
    if isinstance(exc, QualityError):
        extra["reasons"] = list(exc.reasons)
    if isinstance(exc, (RateLimitError, ServiceBusyError)):
        extra["retry_after"] = exc.retry_after
    return problem(status_of(exc), " ".join(str(exc).split()), kind, **extra)
