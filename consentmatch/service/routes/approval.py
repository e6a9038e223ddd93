"""Search requests held for approval: the queue, one request, its probe, approve, deny."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from ...gallery import Gallery
from ...services import approvals
from ..auth import Caller
from ..deps import NO_STORE, Paging, gallery_of, json_answer, listing, role
from ..schemas import DecisionIn, SearchRequestOut, problems

__all__ = ["router"]

router = APIRouter(tags=["approval"], responses=problems(401, 403, 404, 422, 429))
_Gallery = Annotated[Gallery, Depends(gallery_of)]
_RequestId = Annotated[str, Path(max_length=64)]


@router.get("/v1/requests", summary="Search requests: an approver's queue, or the caller's own",
            response_model=list[SearchRequestOut])
def requests(
    gallery: _Gallery, found: Annotated[Caller, role("operator", "approver", "auditor")],
    page: Annotated[Paging, Depends()],
    status: Annotated[str | None, Query(pattern=f"^({'|'.join(approvals.STATUSES)})$")] = None,
) -> Response:
    mine = None if approvals.oversees(found.key.roles) else found.name
    return listing([r.to_dict() for r in gallery.search_requests(status=status, requester=mine)], page)


@router.get("/v1/requests/{request_id}", summary="One request; its result only for the requester, once approved",
            response_model=SearchRequestOut)
def search_request(gallery: _Gallery, found: Annotated[Caller, role("operator", "approver", "auditor")],
                   request_id: _RequestId) -> Response:
    held = gallery.search_request(request_id, actor=found.name, own_only=not approvals.oversees(found.key.roles))
    return json_answer(held.to_dict())


@router.get("/v1/requests/{request_id}/probe", summary="The held probe, for the approver deciding",
            response_class=Response,
            responses={200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "The probe photo as it was sent"}})
def request_probe(gallery: _Gallery, _: Annotated[Caller, role("approver")], request_id: _RequestId) -> Response:
    return Response(approvals.request_probe(gallery.context, request_id), media_type="application/octet-stream",
                    headers=NO_STORE)


@router.post("/v1/requests/{request_id}/approve", summary="Approve: the search runs now",
             response_model=SearchRequestOut)
def approve(gallery: _Gallery, found: Annotated[Caller, role("approver")], request_id: _RequestId,
            body: DecisionIn) -> Response:
    decided = gallery.approve_request(request_id, reason=body.reason, actor=found.name)
    return json_answer({**decided.to_dict(), "result": None})


@router.post("/v1/requests/{request_id}/deny", summary="Deny: no search; the probe is destroyed",
             response_model=SearchRequestOut)
def deny(gallery: _Gallery, found: Annotated[Caller, role("approver")], request_id: _RequestId,
         body: DecisionIn) -> Response:
    return json_answer(gallery.deny_request(request_id, reason=body.reason, actor=found.name).to_dict())
