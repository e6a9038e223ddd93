"""The Gallery names the HTTP service once called (`Gallery.authenticate`, ...): its state lives in
access.py and approvals.py now, called with `Gallery.context`. Each old name still works, with
its old positional arguments, and warns (DeprecationWarning) naming its replacement."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from . import access, approvals
from .context import Context

__all__ = ["MOVED", "moved"]


def _record_refusal(ctx: Context, action: str, error: Exception, *, subject: str | None = None,
                    purpose: str | None = None, actor: str | None = None, details: dict[str, str] | None = None) -> None:
    ctx.record_refusal(action, subject, purpose, actor, error, details)


#: Old name -> (what to call instead, the function it runs with the gallery's Context first).
MOVED: dict[str, tuple[str, Callable[..., Any]]] = {
    "authenticate": ("services.access.authenticate(gallery.context, key)", access.authenticate),
    "request_probe": ("services.approvals.request_probe(gallery.context, request_id)", approvals.request_probe),
    "answer_once": ("services.access.answer_once(gallery.context, ...)", access.answer_once),
    "recall_answer": ("services.access.recall(gallery.context, owner, key)", access.recall),
    "keep_answer": ("services.access.remember(gallery.context, ...)", access.remember),
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
