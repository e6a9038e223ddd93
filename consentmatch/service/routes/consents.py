"""Consent records (the enroller records and revokes; the auditor reads)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse, Response

from ...consent import Consent
from ...gallery import Gallery
from ..auth import Caller
from ..deps import Paging, date, fingerprint, gallery_of, idempotent, json_answer, listing, role
from ..schemas import ConsentIn, ConsentOut, ErasureOut, problems

__all__ = ["router"]

router = APIRouter(tags=["consents"], responses=problems(401, 403, 422, 429))
_Gallery = Annotated[Gallery, Depends(gallery_of)]


@router.post("/v1/consents", status_code=201, summary="Record a consent", response_model=ConsentOut,
             responses=problems(409))
def grant(
    gallery: _Gallery, found: Annotated[Caller, role("enroller")], body: ConsentIn,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    def run() -> JSONResponse:
        consent = Consent(body.reference, tuple(body.purposes), date(body.expires, "expires"), body.jurisdiction,
                          signer=body.signer, evidence_sha256=body.evidence_sha256, notice_version=body.notice_version)
        record = gallery.grant_consent(body.subject, consent, email=body.email, actor=found.name)
        return json_answer(record.to_dict(), 201)

    return idempotent(gallery, found, idempotency_key, fingerprint(b"consent#", body.model_dump_json().encode()), run)


@router.get("/v1/consents", summary="Consent records, of everyone or one subject", response_model=list[ConsentOut])
def consents(
    gallery: _Gallery, _: Annotated[Caller, role("enroller", "auditor")], page: Annotated[Paging, Depends()],
    subject: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    return listing([r.to_dict() for r in gallery.consents(subject)], page)


@router.get("/v1/consents/{ref:path}", summary="One consent record", response_model=ConsentOut,
            responses=problems(404))
def consent(gallery: _Gallery, _: Annotated[Caller, role("enroller", "auditor")],
            ref: Annotated[str, Path(max_length=200)]) -> Response:
    return json_answer(gallery.consent(ref).to_dict())


@router.delete("/v1/consents/{ref:path}", summary="Revoke a consent (erases the templates)",
               response_model=ErasureOut, responses=problems(404))
def revoke(gallery: _Gallery, found: Annotated[Caller, role("enroller")],
           ref: Annotated[str, Path(max_length=200)]) -> Response:
    return json_answer(gallery.revoke_consent(ref, actor=found.name).to_dict())
