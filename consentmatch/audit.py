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

from .results import AuditCheck

__all__ = ["ACTIONS", "GENESIS", "check_chain", "details_text", "digest", "timestamp"]

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
