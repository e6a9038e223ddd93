"""The Gallery names the HTTP service once called (`Gallery.authenticate`, ...): its state lives in
access.py and approvals.py now, called with `Gallery.context`. Each old name still works, with
its old arguments (positional and keyword), and warns (DeprecationWarning) naming its replacement."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from . import access, approvals
from .context import Context

__all__ = ["MOVED", "moved"]


# Adapters where the old method's keyword names differ from the function's: old calls keep working.
def _authenticate(ctx: Context, key: str | None, *, before_check: Callable[[], None] | None = None) -> Any:
    return access.authenticate(ctx, key, before_check)


def _answer_once(ctx: Context, owner: str, key: str, fingerprint: str, run: Callable[[], tuple[int, str]]) -> Any:
    return access.answer_once(ctx, owner, key, fingerprint, run)


def _keep_answer(ctx: Context, owner: str, key: str, fingerprint: str, status: int, body: str) -> None:
    access.remember(ctx, owner, key, fingerprint, status, body)


def _record_refusal(ctx: Context, action: str, error: Exception, *, subject: str | None = None,
                    purpose: str | None = None, actor: str | None = None, details: dict[str, str] | None = None) -> None:
    ctx.record_refusal(action, subject, purpose, actor, error, details)


#: Old name -> (what to call instead, the function it runs with the gallery's Context first).
MOVED: dict[str, tuple[str, Callable[..., Any]]] = {
    "authenticate": ("services.access.authenticate(gallery.context, key)", _authenticate),
    "request_probe": ("services.approvals.request_probe(gallery.context, request_id)", approvals.request_probe),
    "answer_once": ("services.access.answer_once(gallery.context, ...)", _answer_once),
    "recall_answer": ("services.access.recall(gallery.context, owner, key)", access.recall),
    "keep_answer": ("services.access.remember(gallery.context, ...)", _keep_answer),
    "record_refusal": ("gallery.context.record_refusal(action, subject, purpose, actor, error)", _record_refusal),
}


class _HasContext(Protocol):
    @property
    def context(self) -> Context: ...


def moved(gallery: _HasContext, name: str) -> Callable[..., Any]:
    """`gallery.<name>` for an old name, bound to its Context, with a DeprecationWarning; AttributeError otherwise."""
    if name not in MOVED:
        raise AttributeError(f"'Gallery' object has no attribute '{name}'")
    replacement, function = MOVED[name]
    warnings.warn(f"Gallery.{name} is deprecated: call {replacement}", DeprecationWarning, stacklevel=3)
    return functools.partial(function, gallery.context)
