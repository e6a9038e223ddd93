"""Liveness, readiness (no key needed) and the version with the caller's key."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from ... import __version__
from ...errors import StorageError
from ...gallery import Gallery
from ..auth import Caller
from ..deps import gallery_of, json_answer, role
from ..problems import problem
from ..schemas import HealthOut, VersionOut, problems

__all__ = ["router"]

router = APIRouter(tags=["service"])


@router.get("/v1/health", summary="Liveness: the service answers (no key needed)", response_model=HealthOut)
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/health/ready", summary="Readiness: the gallery's store answers (no key needed)",
            response_model=HealthOut,
            responses={503: {**problems(503)[503], "description": "The store cannot be reached: route no calls here"}})
def ready(gallery: Annotated[Gallery, Depends(gallery_of)]) -> Response:
    try:
        gallery.policy()  # one read transaction, the cheapest call that needs the store
    except StorageError as exc:
        logging.getLogger("uvicorn.error").warning("Not ready: %s", exc)
        return problem(503, "The gallery's store does not answer: the server's log has why.", "StorageError",
                       retry_after=5)
    return json_answer({"status": "ready"})


@router.get("/v1/version", summary="The service's version and the caller's key", response_model=VersionOut,
            responses=problems(401, 429))
def version(found: Annotated[Caller, role()]) -> Response:
    return json_answer({"version": __version__, "key": found.key.to_dict()})
