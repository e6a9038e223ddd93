"""The /v1 routes, one `APIRouter` per resource; `ROUTERS` in the order `create_app` mounts them."""

from __future__ import annotations

from . import admin, approval, audit, consents, health, search, subjects

__all__ = ["ROUTERS"]

ROUTERS = (health.router, consents.router, subjects.router, search.router, approval.router, audit.router,
           admin.router)
