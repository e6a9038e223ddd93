"""The HTTP service: `consentmatch serve`, an adapter over one `Gallery` (see app.py)."""

from .app import MAX_BODY_BYTES, create_app

__all__ = ["MAX_BODY_BYTES", "create_app"]
