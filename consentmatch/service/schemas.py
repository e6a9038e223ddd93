"""The service's bodies in OpenAPI: what each call takes (pydantic, checked) and what it answers.

The answers are the results' `to_dict()` (results.py), sent as they are: these models only
describe them, so a client generator and a reader of /openapi.json know every field. A test
(tests/test_service_openapi.py) checks real answers against them, field for field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .problems import PROBLEM_JSON

__all__ = [
    "ApiKeyIn", "ApiKeyOut", "AuditCheckOut", "AuditEventOut", "CandidateOut", "ConsentIn", "ConsentOut", "DecisionIn",
    "EnrollmentOut", "ErasureOut", "ExportOut", "FaceOut", "HealthOut", "KeyRevokedOut", "MatchOut", "NewApiKeyOut",
    "PolicyIn", "PolicyOut", "Problem", "PurposeIn", "PurposeOut", "PurposeRemovedOut", "RetentionOut",
    "SearchRequestOut", "SessionOut", "SubjectOut", "VerificationOut", "VersionOut", "problems",
]


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


# -- answers: each the `to_dict()` of a result in results.py (times are ISO 8601 strings)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Out):
    """An RFC 9457 problem: every error answer (`problems.py`); `detail` is the CLI's one line."""

    model_config = ConfigDict(extra="allow")  # `reasons` of a QualityError, `retry_after` of a 429 or 503
    type: str
    title: str
    status: int
    detail: str
    error: str = Field(description="The error's class in errors.py (as the audit trail names it)")


class HealthOut(_Out):
    status: str = Field(examples=["ok"])


class ApiKeyOut(_Out):
    """`ApiKeyInfo`: never the key, nor its hash."""

    name: str
    roles: list[str]
    purposes: list[str]
    expires: str | None
    created_at: str | None
    revoked_at: str | None
    rate_limit: int | None


class SessionOut(_Out):
    """The console's session: its key and deadlines (`csrf_token` at sign-in only; no deadlines
    for a call made with a bearer key)."""

    key: ApiKeyOut
    expires_at: str | None
    ends_by: str | None = None
    idle_timeout_s: int | None = None
    csrf_token: str | None = None


class VersionOut(_Out):
    version: str
    key: ApiKeyOut


class NewApiKeyOut(_Out):
    """`NewApiKey`: the only answer that holds the key itself."""

    name: str
    key: str
    roles: list[str]
    purposes: list[str]
    expires: str | None


class KeyRevokedOut(_Out):
    name: str
    revoked: bool


class ConsentOut(_Out):
    """`ConsentRecord`."""

    reference: str
    subject: str
    purposes: list[str]
    granted_at: str | None
    expires_at: str | None
    jurisdiction: str | None
    signer: str
    evidence_sha256: str | None
    notice_version: str | None
    revoked_at: str | None
    active: bool


class ErasureOut(_Out):
    """`Erasure`: the receipt; `verified` is its post-check."""

    subject: str
    templates_removed: int
    index_entries_removed: int
    consents_removed: int
    reason: str
    verified: bool


class EnrollmentOut(_Out):
    """`Enrollment`."""

    subject: str
    templates_added: int
    templates_total: int
    consent_reference: str
    photos: list[str]
    already_enrolled: int


class SubjectOut(_Out):
    """`SubjectInfo`: never templates."""

    subject: str
    templates: int
    enrolled_at: str | None
    active_purposes: list[str]
    consents: list[ConsentOut]


class CandidateOut(_Out):
    subject: str
    distance: float


class FaceOut(_Out):
    """`FaceMatch`: `box` is [top, right, bottom, left] in pixels."""

    box: list[int]
    subject: str | None
    distance: float | None
    candidates: list[CandidateOut]
    ambiguous: bool


class MatchOut(_Out):
    """`MatchResult`."""

    image: str
    faces: list[FaceOut]
    error: str | None
    purpose: str
    tolerance: float
    at: str | None
    image_sha256: str | None
    audit_event: int | None
    model: dict[str, str] | None


class VerificationOut(_Out):
    """`Verification`: `distance` only within the tolerance."""

    subject: str
    image: str
    match: bool
    distance: float | None
    tolerance: float
    error: str | None
    at: str | None
    image_sha256: str | None
    audit_event: int | None
    model: dict[str, str] | None


class SearchRequestOut(_Out):
    """`SearchRequest`: `result` only for its requester, once approved."""

    request_id: str
    kind: str
    status: str
    requester: str
    purpose: str
    subject: str | None
    case_ref: str
    reason: str
    tolerance: float | None
    top_k: int | None
    created_at: str | None
    expires_at: str | None
    decided_by: str | None
    decided_at: str | None
    decision_reason: str | None
    result: dict[str, Any] | None
    error: str | None


class AuditEventOut(_Out):
    """`AuditEvent`: one link of the chain (never an image, an embedding or a location)."""

    seq: int
    at: str | None
    actor: str
    action: str
    subject: str | None
    purpose: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class ExportOut(_Out):
    """A subject access export (`Gallery.export`): no embeddings."""

    model_config = ConfigDict(extra="allow")
    subject: str
    exported_at: str
    gallery: str
    consents: list[ConsentOut]
    templates: list[dict[str, Any]]
    retention: dict[str, Any]
    audit: list[AuditEventOut]


class AuditCheckOut(_Out):
    """`AuditCheck`."""

    intact: bool
    events: int
    head: str
    broken_at: int | None
    problem: str | None


class RetentionOut(_Out):
    """`RetentionEntry`."""

    subject: str
    templates: int
    destroy_by: str | None
    rule: str
    overdue: bool


class PolicyOut(BaseModel):
    """The gallery's policy: every key of `policy.POLICY` with its value."""

    model_config = ConfigDict(extra="allow")


class PurposeOut(_Out):
    """`PurposeInfo`."""

    purpose: str
    declared_at: str | None
    active_consents: int
    consents: int
    needs_approval: bool


class PurposeRemovedOut(_Out):
    name: str
    removed: bool


#: What each problem status means, as the operations declare it.
_MEANING = {
    400: "The photo or manifest cannot be read",
    401: "No valid API key or console session",
    403: "The key lacks the role or purpose, or the policy refuses",
    404: "Not found",
    409: "The consent does not allow it",
    413: "The request body is over the limit",
    422: "An argument is invalid, or the face cannot be used",
    429: "Over the key's rate, or too many failed authentications (Retry-After)",
    503: "Busy, or the store does not answer (Retry-After)",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of an operation that may answer these problems (application/problem+json)."""
    return {status: {"description": _MEANING[status], "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}}
            for status in statuses}


_PROBLEM_SCHEMA = Problem.model_json_schema()
