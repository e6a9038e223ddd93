"""The audit trail, its chain check, and retention dates (auditor)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from ...gallery import Gallery
from ..auth import Caller
from ...audit import bound
from ..deps import Paging, gallery_of, json_answer, listing, role
from ..schemas import AuditCheckOut, AuditEventOut, RetentionOut, problems

__all__ = ["router"]

router = APIRouter(tags=["audit"], responses=problems(401, 403, 422, 429))
_Gallery = Annotated[Gallery, Depends(gallery_of)]
_Auditor = Annotated[Caller, role("auditor")]


@router.get("/v1/audit", summary="The audit trail, with the CLI's filters", response_model=list[AuditEventOut])
def audit(
    gallery: _Gallery, _: _Auditor, page: Annotated[Paging, Depends()],
    subject: Annotated[str | None, Query(max_length=200)] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=40)] = None,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=40, examples=["2026-11-01"])] = None,
    until: Annotated[str | None, Query(max_length=40, description="A bare date takes that whole day (UTC).")] = None,
) -> Response:
    events = gallery.audit(subject, actor=actor, action=action, purpose=purpose, since=bound(since, "since"),
                           until=bound(until, "until", end_of_day=True))
    return listing([e.to_dict() for e in events], page)


@router.get("/v1/audit/verify", summary="Walk the audit chain and check every row", response_model=AuditCheckOut)
def audit_verify(gallery: _Gallery, _: _Auditor) -> Response:
    return json_answer(gallery.verify_audit().to_dict())


@router.get("/v1/retention", summary="When each subject's templates must be destroyed",
            response_model=list[RetentionOut])
def retention(gallery: _Gallery, _: _Auditor, page: Annotated[Paging, Depends()]) -> Response:
    return listing([e.to_dict() for e in gallery.retention()], page)
