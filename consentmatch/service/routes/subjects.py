"""Enrolled subjects: enroll photos, list, forget, export (enroller, auditor; an admin may forget)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Path, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ...errors import InvalidArgumentError
from ...gallery import Gallery
from ...images import MAX_FILE_BYTES, Upload, upload_name
from ..auth import Caller
from ..deps import Paging, fingerprint, gallery_of, idempotent, json_answer, listing, role
from ..schemas import EnrollmentOut, ErasureOut, ExportOut, SubjectOut, problems

__all__ = ["read_upload", "router"]

router = APIRouter(tags=["subjects"], responses=problems(401, 403, 422, 429))
_Gallery = Annotated[Gallery, Depends(gallery_of)]


async def read_upload(upload: UploadFile) -> Upload:
    """The upload's bytes, named by its file name (made safe to print) in answers and the audit trail."""
    data = await upload.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidArgumentError(f"The photo '{upload_name(upload.filename)}' is over "
                                   f"{MAX_FILE_BYTES // (1024 * 1024)} MiB: downscale or re-compress it.")
    return Upload(data, upload.filename)


@router.post("/v1/subjects/{subject}/photos", status_code=201, response_model=EnrollmentOut,
             summary="Enroll photos of a consenting subject (all or nothing)", responses=problems(400, 404, 409, 503))
async def enroll(
    gallery: _Gallery, found: Annotated[Caller, role("enroller")], subject: Annotated[str, Path(max_length=200)],
    photos: Annotated[list[UploadFile], File(description="Photos of this person only, one face each")],
    consent_ref: Annotated[str, Form(max_length=200, examples=["FORM-17"])],
    quality: Annotated[str | None, Form(max_length=10)] = None,
    allow_duplicate: Annotated[bool, Form()] = False,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    if not 1 <= len(photos) <= 20:
        raise InvalidArgumentError("Send 1 to 20 photos per enrollment call.")
    data = [await read_upload(p) for p in photos]

    def work() -> Response:
        digest = fingerprint(json.dumps([subject, consent_ref, quality, allow_duplicate]).encode(),
                             *(hashlib.sha256(item).digest() for item in data))

        def run() -> JSONResponse:
            result = gallery.enroll(subject, data, consent_ref, quality=quality, allow_duplicate=allow_duplicate,
                                    actor=found.name)
            return json_answer(result.to_dict(), 201)

        return idempotent(gallery, found, idempotency_key, digest, run)

    return await run_in_threadpool(work)


@router.get("/v1/subjects", summary="Everyone enrolled (never templates)", response_model=list[SubjectOut])
def subjects(gallery: _Gallery, _: Annotated[Caller, role("enroller", "auditor")],
             page: Annotated[Paging, Depends()]) -> Response:
    return listing([s.to_dict() for s in gallery.subjects()], page)


@router.delete("/v1/subjects/{subject}", summary="Forget a subject: the erasure receipt", response_model=ErasureOut,
               responses=problems(404))
def forget(gallery: _Gallery, found: Annotated[Caller, role("enroller", "admin")],
           subject: Annotated[str, Path(max_length=200)]) -> Response:
    return json_answer(gallery.forget(subject, actor=found.name).to_dict())


@router.get("/v1/subjects/{subject}/export", summary="A subject access export (no embeddings)",
            response_model=ExportOut, responses=problems(404))
def export(gallery: _Gallery, found: Annotated[Caller, role("auditor")],
           subject: Annotated[str, Path(max_length=200)]) -> Any:
    return json_answer(gallery.export(subject, actor=found.name))
