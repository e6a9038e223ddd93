"""Commands of the service: serve, API keys, and search requests held for approval."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..text import shown as _shown
from .common import (
    ActorOption,
    GalleryOption,
    JsonOption,
    app,
    day,
    mapped_errors,
    gallery_at,
    open_gallery,
    out,
    print_json,
    print_json_lines,
    print_requests,
    settings,
    table,
)

# -- serve ----------------------------------------------------------------------------------


@app.command()
def serve(
    gallery: GalleryOption,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 for every interface "
                                                      "(put TLS in front).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Serve the gallery over HTTP: API keys with roles, department approval, RFC 9457 errors.

    Every endpoint but /v1/health (and /v1/health/ready) needs `Authorization: Bearer <key>` (`consentmatch apikey
    create`); the OpenAPI document is at /openapi.json. The models are loaded before the first
    request. Stop it with Ctrl-C. For example: consentmatch serve -g visitors.db --port 8000

    A connection has CONSENTMATCH_HEADER_TIMEOUT seconds (10) to send its request's headers, at
    most CONSENTMATCH_MAX_CONNECTIONS (1000) are open, and CONSENTMATCH_PHOTO_WORKERS requests do
    photo work at once (more are answered 503 with Retry-After).
    """
    import copy

    import uvicorn

    from .. import vision
    from ..service import create_app
    from ..service.server import run

    with mapped_errors():
        limits = settings()
        g = gallery_at(gallery, existing=True)
        vision.load_models(vision.default_encoder(limits))
    # uvicorn's own logging, on stderr (stdout stays for what a command answers); the access log
    # has method, path and status: never a body, so never a photo.
    logging = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for handler in logging["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    try:
        run(create_app(g, limits), host, port, limits, logging)
    finally:
        g.close()


# -- API keys -------------------------------------------------------------------------------

apikey_app = typer.Typer(help="API keys of the service: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Argument(help="Who uses the key: its name is the audit trail's actor.")],
    gallery: GalleryOption,
    role: Annotated[list[str], typer.Option("--role", "-r", help="admin, enroller, operator, approver or auditor; "
                                                                  "repeat for several.")],
    purpose: Annotated[Optional[list[str]], typer.Option("--purpose", "-p", help="A purpose the key may search "
                                                         "for; repeat for several (none: all).")] = None,
    expires: Annotated[Optional[str], typer.Option("--expires", help="End date, YYYY-MM-DD.")] = None,
    rate_limit: Annotated[Optional[int], typer.Option("--rate-limit", min=1, max=1_000_000,
                                                      help="Requests a minute (default: the policy's rate_limit).")] = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key; it is printed once (only a salted hash is kept): hand it over now.

    **Example:** `consentmatch apikey create desk-3 -g visitors.db --role operator --purpose visitor-check-in`
    """
    from ..consent import parse_expiry

    with mapped_errors(), open_gallery(gallery, actor, as_json=as_json) as g:
        created = g.create_api_key(name, roles=role, purposes=purpose or (),
                                   expires=parse_expiry(expires) if expires else None, rate_limit=rate_limit)
    if as_json:
        print_json(created.to_dict())
        return
    out.print(f"API key '{_shown(created.name)}' ({', '.join(created.roles)}; purposes: "
              f"{_shown(', '.join(created.purposes)) if created.purposes else 'all'}; expires {day(created.expires)}):")
    print(created.key, flush=True)
    out.print("It is shown only now: store it where the caller keeps secrets.")


@apikey_app.command("list")
def apikey_list(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """The API keys, revoked ones included (never a key or its hash), with each one's rate limit:
    its own, or the policy's `rate_limit` (JSON: `rate_limit` null)."""
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
        keys = g.api_keys()
        default_rate = g.policy()["rate_limit"] if keys else None
    if as_json:
        print_json_lines(keys)
        return
    grid = table("Name", "Roles", "Purposes", "Rate/min", "Expires", "Revoked")
    for key in keys:
        rate = str(key.rate_limit) if key.rate_limit is not None else f"{default_rate} (policy)"
        grid.add_row(_shown(key.name), ", ".join(key.roles), _shown(", ".join(key.purposes)) or "all", rate,
                     day(key.expires), day(key.revoked_at))
    out.print(grid)
    out.print(f"{len(keys)} API key(s).")


@apikey_app.command("revoke")
def apikey_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")], gallery: GalleryOption, actor: ActorOption = None,
) -> None:
    """Revoke an API key at once. Exit 1 if no active key has the name."""
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        revoked = g.revoke_api_key(name)
    if not revoked:
        from .common import fail

        fail(f"No active API key is named '{name}': `consentmatch apikey list` shows them.")
    out.print(f"Revoked the API key '{_shown(name)}'.")


# -- search requests ------------------------------------------------------------------------

request_app = typer.Typer(help="Searches held for a department's approval: list, show, approve, deny.",
                          no_args_is_help=True)
app.add_typer(request_app, name="request")
RequestId = Annotated[str, typer.Argument(help="The request's id (req_...).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why: recorded in the audit trail.")]


@request_app.command("list")
def request_list(
    gallery: GalleryOption,
    status: Annotated[Optional[str], typer.Option("--status", help="pending, approved, denied, expired or erased.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Search requests, oldest first (results are shown to their requester only: `request show`).

    **Example:** `consentmatch request list -g visitors.db --status pending`
    """
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
        requests = g.search_requests(status=status)
    print_requests(requests, as_json)
    if not as_json:
        out.print(f"{len(requests)} request(s).")


@request_app.command("show")
def request_show(request_id: RequestId, gallery: GalleryOption, actor: ActorOption = None,
                 as_json: JsonOption = False) -> None:
    """One request; its result too when --actor is its requester and it was approved."""
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        request = g.search_request(request_id)
    if as_json:
        print_json(request.to_dict())
        return
    print_requests([request], False)
    if request.result is not None or request.error is not None:
        import json

        print(json.dumps(request.result if request.result is not None else {"error": request.error},
                         ensure_ascii=False), flush=True)


@request_app.command("approve")
def request_approve(request_id: RequestId, gallery: GalleryOption, reason: ReasonOption, actor: ActorOption = None,
                    as_json: JsonOption = False) -> None:
    """Approve a pending request: its search runs now, for the requester; the probe is destroyed.
    The requester may not approve their own request.
    """
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        request = g.approve_request(request_id, reason=reason)
    from dataclasses import replace

    print_requests([replace(request, result=None)], as_json)


@request_app.command("deny")
def request_deny(request_id: RequestId, gallery: GalleryOption, reason: ReasonOption, actor: ActorOption = None,
                 as_json: JsonOption = False) -> None:
    """Deny a pending request: no search runs; the probe is destroyed."""
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        request = g.deny_request(request_id, reason=reason)
    print_requests([request], as_json)

