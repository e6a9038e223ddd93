"""The HTTP service (`consentmatch serve`): an adapter over one `Gallery`, like the CLI.

Each route authenticates the bearer key, checks its role (and purposes), calls one Gallery
method under the key's name and returns the result's `to_dict()`: the JSON of the CLI's
`--json`. Errors become RFC 9457 problems through `problems.py`'s one map. FastAPI, because it
is the most used ASGI stack for exactly this (typed forms and uploads, an OpenAPI document from
the code, a test client), on uvicorn.

Handlers that take uploads check the key, read the upload, then do the blocking work (the photo
work, the store) on the thread pool: the event loop never runs a model.
Photos never touch the disk: uploads are kept in memory up to the decoder's size limit (larger
bodies are refused with 413 before they are read), and nothing logs a photo or an embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..audit import ACTIONS
from ..consent import Consent, parse_expiry
from ..errors import (ApprovalRequiredError, ConsentMatchError, InvalidArgumentError, PermissionDeniedError,
                      RequestNotFoundError, StorageError)
from ..gallery import Gallery
from ..images import MAX_FILE_BYTES, Upload, upload_name
from ..results import MatchResult, SearchRequest, Verification
from ..settings import Settings
from ..text import check_text
from .auth import Caller, RateLimiter, caller
from .console import mount_console
from .docs import mount_docs
from .headers import SecurityHeaders
from .limits import PhotoSlots
from .problems import PROBLEM_JSON, problem, problem_for

__all__ = ["MAX_BODY_BYTES", "create_app"]

#: The largest request body: one photo at the decoder's limit, with room for the form around it.
MAX_BODY_BYTES = MAX_FILE_BYTES + 1024 * 1024
# Starlette spools uploads over 1 MiB to a temporary file: a probe photo must never reach the disk.
MultiPartParser.spool_max_size = MAX_BODY_BYTES

_NO_STORE = {"Cache-Control": "no-store"}
#: The audit action of a refused call, by route name, where the two differ; a route that names no
#: action (a read: the audit trail, the keys) is recorded as "call" (its `details.call` says which).
_REFUSED_ACTIONS = {
    "grant": "consent-grant", "revoke": "consent-revoke", "create-apikey": "apikey-create",
    "revoke-apikey": "apikey-revoke", "set-policy": "policy-set", "declare": "purpose-add",
    "withdraw": "purpose-remove", "approve": "request-approve", "deny": "request-deny",
}


class ConsentIn(BaseModel):
    """A consent to record: the fields of `consentmatch consent grant`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"subject": "alice", "reference": "FORM-17", "purposes": ["visitor-check-in"], "expires": "2027-12-31",
         "jurisdiction": "US-IL", "evidence_sha256": "9f" * 32, "notice_version": "v3"}]})

    subject: str = Field(min_length=1, max_length=200)
    reference: str = Field(min_length=1, max_length=200)
    purposes: list[str] = Field(min_length=1, max_length=50)
    expires: str | None = Field(default=None, max_length=40, description="YYYY-MM-DD")
    jurisdiction: str | None = Field(default=None, max_length=10)
    signer: str = "subject"
    evidence_sha256: str | None = Field(default=None, max_length=64)
    notice_version: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class DecisionIn(BaseModel):
    """An approver's decision on a search request."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "Case 24-118 reviewed"}]})

    reason: str = Field(min_length=1, max_length=200)


class ApiKeyIn(BaseModel):
    """A key to create (the `admin` role): the options of `consentmatch apikey create`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "desk-3", "roles": ["operator"], "purposes": ["visitor-check-in"], "expires": "2027-06-30"}]})

    name: str = Field(min_length=1, max_length=200)
    roles: list[str] = Field(min_length=1, max_length=5)
    purposes: list[str] = Field(default=[], max_length=50)
    expires: str | None = Field(default=None, max_length=40, description="YYYY-MM-DD")
    rate_limit: int | None = Field(default=None, ge=1, le=1_000_000)


class PolicyIn(BaseModel):
    """A policy value, as `consentmatch policy set KEY VALUE` takes it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"value": "law-enforcement"}]})

    value: str | bool | float | list[str]


class PurposeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "visitor-check-in"}]})

    name: str = Field(min_length=1, max_length=64)


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


async def _read(upload: UploadFile) -> Upload:
    """The upload's bytes, named by its file name (made safe to print) in answers and the audit trail."""
    data = await upload.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidArgumentError(f"The photo '{upload_name(upload.filename)}' is over "
                                   f"{MAX_FILE_BYTES // (1024 * 1024)} MiB: downscale or re-compress it.")
    return Upload(data, upload.filename)


def _date(text: str | None, what: str) -> datetime | None:
    if text is None or not text.strip():
        return None
    try:
        return parse_expiry(text)
    except ValueError:
        raise InvalidArgumentError(f"{what} {text!r} is not a date: write YYYY-MM-DD.") from None


def _moment(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(f"{what} {text!r} is not a date or time: write YYYY-MM-DD or an ISO 8601 time.") from None


def _search_or_hold(
    gallery: Gallery, purpose: str, search: Callable[[], MatchResult | Verification],
    hold: Callable[[str, str], SearchRequest], case_ref: str | None, reason: str | None,
) -> JSONResponse:
    """The search's result (200); for a purpose that needs approval, with a case reference and a
    reason, the request that now holds it (202). Without them the refusal stands (a problem,
    audited by the search)."""
    if case_ref and reason and purpose.strip() in gallery.policy()["approval_purposes"]:
        return _json(hold(case_ref, reason).to_dict(), 202)
    try:
        return _json(search().to_dict())
    except ApprovalRequiredError:  # the policy changed between the two reads
        if not case_ref or not reason:
            raise
    return _json(hold(case_ref, reason).to_dict(), 202)


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=_NO_STORE)


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
    limiter = RateLimiter()
    app.add_middleware(PhotoSlots, slots=(settings or Settings()).photo_slots)  # limits.py: 503 beyond them
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(SecurityHeaders)  # outermost: every answer, a refusal's too (headers.py)

    @app.exception_handler(ConsentMatchError)
    async def _library_error(request: Request, exc: ConsentMatchError) -> Response:
        return problem_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return problem(422, f"Invalid {where}: {first.get('msg', 'not accepted')}.", "InvalidArgumentError")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:  # pragma: no cover - a bug, never data
        return problem(500, "The service failed unexpectedly: the server's log has the error (never a photo).",
                       "InternalError")

    def who(request: Request, *roles: str, purpose: str | None = None) -> Caller:
        found = caller(request, gallery, limiter)
        try:
            found.require(*roles, purpose=purpose)
        except PermissionDeniedError as exc:  # audited like every refusal: who tried what
            route = request.scope.get("route")
            action = getattr(route, "name", "call").replace("_", "-")
            action = _REFUSED_ACTIONS.get(action, action if action in ACTIONS else "call")  # else the store drops it
            gallery.record_refusal(action, exc, purpose=purpose,
                                   subject=request.path_params.get("subject"), actor=found.name,
                                   details={"call": f"{request.method} {getattr(route, 'path', request.url.path)}"})
            raise
        return found

    def idempotent(caller: Caller, key: str | None, fingerprint: str, run: Callable[[], JSONResponse]) -> Response:
        """Answer a retried call (same Idempotency-Key, same request) with its first answer."""
        if key is None:
            return run()
        key = check_text(key, "Idempotency-Key")

        def answered() -> tuple[int, str]:
            answer = run()
            return answer.status_code, bytes(answer.body).decode()

        status, body = gallery.answer_once(caller.name, key, fingerprint, answered)
        return Response(body, status_code=status, media_type="application/json", headers=_NO_STORE)

    # -- no key

    @app.get("/v1/health", tags=["service"], summary="Liveness: the service answers (no key needed)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/health/ready", tags=["service"], summary="Readiness: the gallery's store answers (no key needed)",
             responses={503: {"description": "The store cannot be reached: route no calls here"}})
    def ready() -> Response:
        try:
            gallery.policy()  # one read transaction, the cheapest call that needs the store
        except StorageError as exc:
            logging.getLogger("uvicorn.error").warning("Not ready: %s", exc)
            return problem(503, "The gallery's store does not answer: the server's log has why.", "StorageError",
                           retry_after=5)
        return _json({"status": "ready"})

    @app.get("/v1/version", tags=["service"], summary="The service's version and the caller's key")
    def version(request: Request) -> JSONResponse:
        found = caller(request, gallery, limiter)
        return _json({"version": __version__, "key": found.key.to_dict()})

    # -- consents (enroller)

    @app.post("/v1/consents", status_code=201, tags=["consents"], summary="Record a consent")
    def grant(
        request: Request, body: ConsentIn,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Response:
        found = who(request, "enroller")

        def run() -> JSONResponse:
            consent = Consent(body.reference, tuple(body.purposes), _date(body.expires, "expires"), body.jurisdiction,
                              signer=body.signer, evidence_sha256=body.evidence_sha256,
                              notice_version=body.notice_version)
            record = gallery.grant_consent(body.subject, consent, email=body.email, actor=found.name)
            return _json(record.to_dict(), 201)

        fingerprint = hashlib.sha256(b"consent#" + body.model_dump_json().encode()).hexdigest()
        return idempotent(found, idempotency_key, fingerprint, run)

    @app.get("/v1/consents", tags=["consents"], summary="Consent records, of everyone or one subject")
    def consents(request: Request, subject: Annotated[str | None, Query(max_length=200)] = None) -> JSONResponse:
        who(request, "enroller", "auditor")
        return _json([r.to_dict() for r in gallery.consents(subject)])

    @app.get("/v1/consents/{ref:path}", tags=["consents"], summary="One consent record")
    def consent(request: Request, ref: Annotated[str, Path(max_length=200)]) -> JSONResponse:
        who(request, "enroller", "auditor")
        return _json(gallery.consent(ref).to_dict())

    @app.delete("/v1/consents/{ref:path}", tags=["consents"], summary="Revoke a consent (erases the templates)")
    def revoke(request: Request, ref: Annotated[str, Path(max_length=200)]) -> JSONResponse:
        found = who(request, "enroller")
        return _json(gallery.revoke_consent(ref, actor=found.name).to_dict())

    # -- subjects (enroller, auditor)

    @app.post("/v1/subjects/{subject}/photos", status_code=201, tags=["subjects"],
              summary="Enroll photos of a consenting subject (all or nothing)")
    async def enroll(
        request: Request, subject: Annotated[str, Path(max_length=200)],
        photos: Annotated[list[UploadFile], File(description="Photos of this person only, one face each")],
        consent_ref: Annotated[str, Form(max_length=200, examples=["FORM-17"])],
        quality: Annotated[str | None, Form(max_length=10)] = None,
        allow_duplicate: Annotated[bool, Form()] = False,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Response:
        found = await run_in_threadpool(who, request, "enroller")
        if not 1 <= len(photos) <= 20:
            raise InvalidArgumentError("Send 1 to 20 photos per enrollment call.")
        data = [await _read(p) for p in photos]

        def work() -> Response:
            digest = hashlib.sha256(json.dumps([subject, consent_ref, quality, allow_duplicate]).encode())
            for item in data:
                digest.update(hashlib.sha256(item).digest())

            def run() -> JSONResponse:
                result = gallery.enroll(subject, data, consent_ref, quality=quality, allow_duplicate=allow_duplicate,
                                        actor=found.name)
                return _json(result.to_dict(), 201)

            return idempotent(found, idempotency_key, digest.hexdigest(), run)

        return await run_in_threadpool(work)

    @app.get("/v1/subjects", tags=["subjects"], summary="Everyone enrolled (never templates)")
    def subjects(request: Request) -> JSONResponse:
        who(request, "enroller", "auditor")
        return _json([s.to_dict() for s in gallery.subjects()])

    @app.delete("/v1/subjects/{subject}", tags=["subjects"], summary="Forget a subject: the erasure receipt")
    def forget(request: Request, subject: Annotated[str, Path(max_length=200)]) -> JSONResponse:
        found = who(request, "enroller", "admin")
        return _json(gallery.forget(subject, actor=found.name).to_dict())

    @app.get("/v1/subjects/{subject}/export", tags=["subjects"], summary="A subject access export (no embeddings)")
    def export(request: Request, subject: Annotated[str, Path(max_length=200)]) -> JSONResponse:
        found = who(request, "auditor")
        return _json(gallery.export(subject, actor=found.name))

    # -- search (operator)

    @app.post("/v1/match", tags=["search"], summary="1:N: who is each face of the photo, among the consented",
              responses={202: {"description": "The purpose needs approval: a search request is pending"}})
    async def match(
        request: Request,
        photo: Annotated[UploadFile, File(description="The probe photo")],
        purpose: Annotated[str, Form(max_length=64, examples=["visitor-check-in"])],
        tolerance: Annotated[float | None, Form(gt=0, le=2)] = None,
        top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
        case_ref: Annotated[str | None, Form(max_length=200)] = None,
        reason: Annotated[str | None, Form(max_length=200)] = None,
    ) -> JSONResponse:
        found = await run_in_threadpool(who, request, "operator", purpose=purpose)
        data = await _read(photo)

        return await run_in_threadpool(
            _search_or_hold, gallery, purpose,
            lambda: gallery.match(data, purpose=purpose, tolerance=tolerance, top_k=top_k, actor=found.name),
            lambda c, r: gallery.request_match(data, purpose=purpose, case_ref=c, reason=r, tolerance=tolerance,
                                               top_k=top_k, actor=found.name),
            case_ref, reason,
        )

    @app.post("/v1/verify", tags=["search"], summary="1:1: is the one face of the photo this subject?",
              responses={202: {"description": "The purpose needs approval: a search request is pending"}})
    async def verify(
        request: Request,
        photo: Annotated[UploadFile, File(description="The probe photo, one face")],
        subject: Annotated[str, Form(max_length=200, examples=["alice"])],
        purpose: Annotated[str, Form(max_length=64, examples=["bank-transfer"])],
        tolerance: Annotated[float | None, Form(gt=0, le=2)] = None,
        case_ref: Annotated[str | None, Form(max_length=200)] = None,
        reason: Annotated[str | None, Form(max_length=200)] = None,
    ) -> JSONResponse:
        found = await run_in_threadpool(who, request, "operator", purpose=purpose)
        data = await _read(photo)

        return await run_in_threadpool(
            _search_or_hold, gallery, purpose,
            lambda: gallery.verify(subject, data, purpose=purpose, tolerance=tolerance, actor=found.name),
            lambda c, r: gallery.request_verify(subject, data, purpose=purpose, case_ref=c, reason=r,
                                                tolerance=tolerance, actor=found.name),
            case_ref, reason,
        )

    # -- approval (operator files, approver decides)

    @app.get("/v1/requests", tags=["approval"], summary="Search requests: an approver's queue, or the caller's own")
    def requests(
        request: Request, status: Annotated[str | None, Query(pattern="^(pending|approved|denied|expired)$")] = None,
    ) -> JSONResponse:
        found = who(request, "operator", "approver", "auditor")
        listed = gallery.search_requests(status=status)
        if not found.has("approver", "auditor"):
            listed = [r for r in listed if r.requester == found.name]
        return _json([r.to_dict() for r in listed])

    @app.get("/v1/requests/{request_id}", tags=["approval"],
             summary="One request; its result only for the requester, once approved")
    def search_request(request: Request, request_id: Annotated[str, Path(max_length=64)]) -> JSONResponse:
        found = who(request, "operator", "approver", "auditor")
        held = gallery.search_request(request_id, actor=found.name)
        if held.requester != found.name and not found.has("approver", "auditor"):
            raise RequestNotFoundError(f"No search request has the id '{request_id}' among yours.")
        return _json(held.to_dict())

    @app.get("/v1/requests/{request_id}/probe", tags=["approval"], summary="The held probe, for the approver deciding",
             response_class=Response, responses={200: {"content": {"image/*": {}}}})
    def request_probe(request: Request, request_id: Annotated[str, Path(max_length=64)]) -> Response:
        who(request, "approver")
        return Response(gallery.request_probe(request_id), media_type="application/octet-stream", headers=_NO_STORE)

    @app.post("/v1/requests/{request_id}/approve", tags=["approval"], summary="Approve: the search runs now")
    def approve(request: Request, request_id: Annotated[str, Path(max_length=64)], body: DecisionIn) -> JSONResponse:
        found = who(request, "approver")
        decided = gallery.approve_request(request_id, reason=body.reason, actor=found.name)
        return _json({**decided.to_dict(), "result": None})

    @app.post("/v1/requests/{request_id}/deny", tags=["approval"], summary="Deny: no search; the probe is destroyed")
    def deny(request: Request, request_id: Annotated[str, Path(max_length=64)], body: DecisionIn) -> JSONResponse:
        found = who(request, "approver")
        return _json(gallery.deny_request(request_id, reason=body.reason, actor=found.name).to_dict())

    # -- audit (auditor)

    @app.get("/v1/audit", tags=["audit"], summary="The audit trail, with the CLI's filters")
    def audit(
        request: Request,
        subject: Annotated[str | None, Query(max_length=200)] = None,
        actor: Annotated[str | None, Query(max_length=200)] = None,
        action: Annotated[str | None, Query(max_length=40)] = None,
        purpose: Annotated[str | None, Query(max_length=64)] = None,
        since: Annotated[str | None, Query(max_length=40, examples=["2026-11-01"])] = None,
        until: Annotated[str | None, Query(max_length=40)] = None,
    ) -> JSONResponse:
        who(request, "auditor")
        events = gallery.audit(subject, actor=actor, action=action, purpose=purpose, since=_moment(since, "since"),
                               until=_moment(until, "until"))
        return _json([e.to_dict() for e in events])

    @app.get("/v1/audit/verify", tags=["audit"], summary="Walk the audit chain and check every row")
    def audit_verify(request: Request) -> JSONResponse:
        who(request, "auditor")
        return _json(gallery.verify_audit().to_dict())

    @app.get("/v1/retention", tags=["audit"], summary="When each subject's templates must be destroyed")
    def retention(request: Request) -> JSONResponse:
        who(request, "auditor")
        return _json([e.to_dict() for e in gallery.retention()])

    # -- administration (admin)

    @app.get("/v1/apikeys", tags=["admin"], summary="The API keys (never a key or its hash)")
    def apikeys(request: Request) -> JSONResponse:
        who(request, "admin")
        return _json([k.to_dict() for k in gallery.api_keys()])

    @app.post("/v1/apikeys", status_code=201, tags=["admin"], summary="Create an API key (shown once)")
    def create_apikey(request: Request, body: ApiKeyIn) -> JSONResponse:
        found = who(request, "admin")
        created = gallery.create_api_key(body.name, roles=body.roles, purposes=body.purposes,
                                         expires=_date(body.expires, "expires"), rate_limit=body.rate_limit,
                                         actor=found.name)
        return _json(created.to_dict(), 201)

    @app.delete("/v1/apikeys/{name}", tags=["admin"], summary="Revoke an API key")
    def revoke_apikey(request: Request, name: Annotated[str, Path(max_length=200)]) -> JSONResponse:
        found = who(request, "admin")
        return _json({"name": name, "revoked": gallery.revoke_api_key(name, actor=found.name)})

    @app.get("/v1/policy", tags=["admin"], summary="The gallery's policy")
    def policy(request: Request) -> JSONResponse:
        who(request, "admin", "auditor")
        return _json(gallery.policy())

    @app.put("/v1/policy/{key}", tags=["admin"], summary="Change one policy key")
    def set_policy(request: Request, key: Annotated[str, Path(max_length=64)], body: PolicyIn) -> JSONResponse:
        found = who(request, "admin")
        return _json(gallery.set_policy(key, body.value, actor=found.name))

    @app.get("/v1/purposes", tags=["admin"], summary="The purposes this gallery serves")
    def purposes(request: Request) -> JSONResponse:
        who(request, "admin", "enroller", "operator", "auditor")
        return _json([p.to_dict() for p in gallery.purposes()])

    @app.post("/v1/purposes", status_code=201, tags=["admin"], summary="Declare a purpose")
    def declare(request: Request, body: PurposeIn) -> JSONResponse:
        found = who(request, "admin")
        return _json(gallery.declare_purpose(body.name, actor=found.name).to_dict(), 201)

    @app.delete("/v1/purposes/{name:path}", tags=["admin"], summary="Withdraw a declared purpose")
    def withdraw(request: Request, name: Annotated[str, Path(max_length=64)]) -> JSONResponse:
        found = who(request, "admin")
        return _json({"name": name, "removed": gallery.remove_purpose(name, actor=found.name)})

    mount_console(app, gallery, limiter)  # the browser console at / and its sign-in (console.py)
    mount_docs(app)  # /docs and /redoc without any third-party script (docs.py)
    return app

