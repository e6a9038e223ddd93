"""1:N match and 1:1 verify (operator); for a purpose that needs approval, held as a request (202)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...errors import ApprovalRequiredError
from ...gallery import Gallery
from ...results import MatchResult, SearchRequest, Verification
from ..auth import Caller
from ..deps import PURPOSE_CHARS, gallery_of, json_answer, searcher
from ..schemas import MatchOut, SearchRequestOut, VerificationOut, problems
from .subjects import read_upload

__all__ = ["router"]

_HELD: dict[int | str, dict[str, Any]] = {
    202: {"model": SearchRequestOut, "description": "The purpose needs approval: a search request is pending"}}
router = APIRouter(tags=["search"], responses={**problems(400, 401, 403, 404, 422, 429, 503), **_HELD})
_Gallery = Annotated[Gallery, Depends(gallery_of)]
_Searcher = Annotated[Caller, Depends(searcher)]


def _search_or_hold(
    gallery: Gallery, purpose: str, search: Callable[[], MatchResult | Verification],
    hold: Callable[[str, str], SearchRequest], case_ref: str | None, reason: str | None,
) -> JSONResponse:
    """The search's result (200); for a purpose that needs approval, with a case reference and a
    reason, the request that now holds it (202). Without them the refusal stands (a problem,
    audited by the search)."""
    if case_ref and reason and purpose.strip() in gallery.policy()["approval_purposes"]:
        return json_answer(hold(case_ref, reason).to_dict(), 202)
    try:
        return json_answer(search().to_dict())
    except ApprovalRequiredError:  # the policy changed between the two reads
        if not case_ref or not reason:
            raise
    return json_answer(hold(case_ref, reason).to_dict(), 202)


@router.post("/v1/match", summary="1:N: who is each face of the photo, among the consented", response_model=MatchOut)
async def match(
    gallery: _Gallery, found: _Searcher,
    photo: Annotated[UploadFile, File(description="The probe photo")],
    purpose: Annotated[str, Form(max_length=PURPOSE_CHARS, examples=["visitor-check-in"])],
    tolerance: Annotated[float | None, Form(gt=0, le=2)] = None,
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
    case_ref: Annotated[str | None, Form(max_length=200)] = None,
    reason: Annotated[str | None, Form(max_length=200)] = None,
) -> JSONResponse:
    data = await read_upload(photo)
    return await run_in_threadpool(
        _search_or_hold, gallery, purpose,
        lambda: gallery.match(data, purpose=purpose, tolerance=tolerance, top_k=top_k, actor=found.name),
        lambda c, r: gallery.request_match(data, purpose=purpose, case_ref=c, reason=r, tolerance=tolerance,
                                           top_k=top_k, actor=found.name),
        case_ref, reason,
    )


@router.post("/v1/verify", summary="1:1: is the one face of the photo this subject?", response_model=VerificationOut)
async def verify(
    gallery: _Gallery, found: _Searcher,
    photo: Annotated[UploadFile, File(description="The probe photo, one face")],
    subject: Annotated[str, Form(max_length=200, examples=["alice"])],
    purpose: Annotated[str, Form(max_length=PURPOSE_CHARS, examples=["bank-transfer"])],
    tolerance: Annotated[float | None, Form(gt=0, le=2)] = None,
    case_ref: Annotated[str | None, Form(max_length=200)] = None,
    reason: Annotated[str | None, Form(max_length=200)] = None,
) -> JSONResponse:
    data = await read_upload(photo)
    return await run_in_threadpool(
        _search_or_hold, gallery, purpose,
        lambda: gallery.verify(subject, data, purpose=purpose, tolerance=tolerance, actor=found.name),
        lambda c, r: gallery.request_verify(subject, data, purpose=purpose, case_ref=c, reason=r,
                                            tolerance=tolerance, actor=found.name),
        case_ref, reason,
    )
