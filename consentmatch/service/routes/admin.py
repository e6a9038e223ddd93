"""Administration (admin): API keys, the policy, the declared purposes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response

from ...gallery import Gallery
from ..auth import Caller
from ..deps import Paging, date, gallery_of, json_answer, listing, role
from ..schemas import (
    ApiKeyIn,
    ApiKeyOut,
    KeyRevokedOut,
    NewApiKeyOut,
    PolicyIn,
    PolicyOut,
    PurposeIn,
    PurposeOut,
    PurposeRemovedOut,
    problems,
)

__all__ = ["router"]

router = APIRouter(tags=["admin"], responses=problems(401, 403, 422, 429))
_Gallery = Annotated[Gallery, Depends(gallery_of)]
_Admin = Annotated[Caller, role("admin")]


@router.get("/v1/apikeys", summary="The API keys (never a key or its hash)", response_model=list[ApiKeyOut])
def apikeys(gallery: _Gallery, _: _Admin, page: Annotated[Paging, Depends()]) -> Response:
    return listing([k.to_dict() for k in gallery.api_keys()], page)


@router.post("/v1/apikeys", status_code=201, summary="Create an API key (shown once)", response_model=NewApiKeyOut)
def create_apikey(gallery: _Gallery, found: _Admin, body: ApiKeyIn) -> Response:
    created = gallery.create_api_key(body.name, roles=body.roles, purposes=body.purposes,
                                     expires=date(body.expires, "expires"), rate_limit=body.rate_limit,
                                     actor=found.name)
    return json_answer(created.to_dict(), 201)


@router.delete("/v1/apikeys/{name}", summary="Revoke an API key", response_model=KeyRevokedOut)
def revoke_apikey(gallery: _Gallery, found: _Admin, name: Annotated[str, Path(max_length=200)]) -> Response:
    return json_answer({"name": name, "revoked": gallery.revoke_api_key(name, actor=found.name)})


@router.get("/v1/policy", summary="The gallery's policy", response_model=PolicyOut)
def policy(gallery: _Gallery, _: Annotated[Caller, role("admin", "auditor")]) -> Response:
    return json_answer(gallery.policy())


@router.put("/v1/policy/{key}", summary="Change one policy key", response_model=PolicyOut)
def set_policy(gallery: _Gallery, found: _Admin, key: Annotated[str, Path(max_length=64)], body: PolicyIn) -> Response:
    return json_answer(gallery.set_policy(key, body.value, actor=found.name))


@router.get("/v1/purposes", summary="The purposes this gallery serves", response_model=list[PurposeOut])
def purposes(gallery: _Gallery, _: Annotated[Caller, role("admin", "enroller", "operator", "auditor")],
             page: Annotated[Paging, Depends()]) -> Response:
    return listing([p.to_dict() for p in gallery.purposes()], page)


@router.post("/v1/purposes", status_code=201, summary="Declare a purpose", response_model=PurposeOut)
def declare(gallery: _Gallery, found: _Admin, body: PurposeIn) -> Response:
    return json_answer(gallery.declare_purpose(body.name, actor=found.name).to_dict(), 201)


@router.delete("/v1/purposes/{name:path}", summary="Withdraw a declared purpose", response_model=PurposeRemovedOut)
def withdraw(gallery: _Gallery, found: _Admin, name: Annotated[str, Path(max_length=64)]) -> Response:
    return json_answer({"name": name, "removed": gallery.remove_purpose(name, actor=found.name)})
