"""The audit trail's rules: append-only, hash-chained events. Never an image, an embedding or a location.

Each event's hash covers its fields and the previous event's hash, so editing, deleting or
inserting a row breaks the chain at that row. The head (last seq and hash) is also kept by the
store, so deleting the newest events is caught too. The stores refuse UPDATE and DELETE on
the trail (SQLite: triggers); `check_chain` catches what is done around them. Record the head
printed by `consentmatch audit --verify` somewhere else to anchor the chain.

This module is engine-free: the stores keep the rows (storage/), and call `link` to chain a
new event and `check_chain` to walk them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from .consent import utc
from .errors import InvalidArgumentError
from .results import AuditCheck
from .text import visible

__all__ = ["ACTIONS", "GENESIS", "bound", "check_chain", "details_text", "digest", "timestamp"]

GENESIS = "0" * 64
ACTIONS = (
    "consent-grant",
    "consent-revoke",
    "enroll",
    "match",
    "verify",
    "forget",
    "purge",
    "optout-add",
    "optout-remove",
    "policy-set",
    "purpose-add",
    "purpose-remove",
    "export",
    "key-rotate",
    "apikey-create",
    "apikey-revoke",
    "request",
    "request-approve",
    "request-deny",
    "request-expire",
    "request-erase",  # an erasure closed a pending request of its subject, or cleared a result naming it
    "call",  # a service call refused before any verb (a 403 on a route that reads): details.call names it
)

#: An event as stored: seq, at, actor, action, subject, purpose, details (JSON text), prev_hash, hash.
Row = tuple[int, str, str, str, "str | None", "str | None", str, str, str]


def bound(text: str | None, what: str, *, end_of_day: bool = False) -> datetime | None:
    """A since or until of an audit search, as the CLI and the HTTP API both read it: a bare date
    is 00:00 UTC that day (with `end_of_day`, the whole day counts), a naive time is UTC.

    Raises:
        InvalidArgumentError: not a date or time, or one a zone pushes past year 9999 or before year 1.
    """
    if text is None:
        return None
    given = text.strip()
    try:
        moment = utc(datetime.fromisoformat(given))
    except ValueError:
        raise InvalidArgumentError(f"{what} '{visible(text)}' is not a date or time: write YYYY-MM-DD or an ISO "
                                   "8601 time such as 2026-03-01T09:30.") from None
    except OverflowError:
        raise InvalidArgumentError(f"{what} '{visible(text)}' is outside the years 1 to 9999 in UTC: write a time "
                                   "within them, e.g. 9999-12-31 or 0001-01-02.") from None
    if end_of_day and len(given) == 10:  # YYYY-MM-DD: through the end of that day
        moment = moment.replace(hour=23, minute=59, second=59, microsecond=999_999)
    return moment


def timestamp(moment: datetime) -> str:
    """Fixed-width UTC text, so string order is time order (the stores' times are all like this)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def details_text(details: dict[str, Any] | None) -> str:
    """The canonical JSON of an event's details: what its hash covers."""
    return json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(seq: int, at: str, actor: str, action: str, subject: str | None, purpose: str | None,
           details: str, prev_hash: str) -> str:
    """An event's hash: its fields and the previous event's hash."""
    canonical = json.dumps([seq, at, actor, action, subject, purpose, details, prev_hash], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_chain(rows: Iterable[Row], head: tuple[int, str]) -> AuditCheck:
    """Walk the chain from the first event (rows in seq order); report the first link that does not hold."""
    head_seq, head_hash = head
    expected_seq, prev = 1, GENESIS
    count = 0
    for seq, at, actor, action, subject, purpose, details, prev_hash, hashed in rows:
        count += 1
        if seq != expected_seq:
            problem = f"event {expected_seq} is missing (next is {seq})" if seq > expected_seq else f"event {seq} is out of order"
            return AuditCheck(False, count, head_hash, broken_at=expected_seq, problem=problem)
        if prev_hash != prev:
            return AuditCheck(False, count, head_hash, broken_at=seq, problem=f"event {seq} does not follow event {seq - 1} (inserted or replaced)")
        if digest(seq, at, actor, action, subject, purpose, details, prev_hash) != hashed:
            return AuditCheck(False, count, head_hash, broken_at=seq, problem=f"event {seq} was edited (its hash does not match its content)")
        prev, expected_seq = hashed, seq + 1
    if (expected_seq - 1, prev) != (head_seq, head_hash):
        return AuditCheck(
            False, count, head_hash, broken_at=expected_seq,
            problem=f"the chain ends at event {expected_seq - 1} but the recorded head is event {head_seq} (events deleted)",
        )
    return AuditCheck(True, count, head_hash)
