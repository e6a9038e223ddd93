"""The audit trail: append-only, hash-chained events. Never an image, an embedding or a location.

Each event's hash covers its fields and the previous event's hash, so editing, deleting or
inserting a row breaks the chain at that row. The head (last seq and hash) is also kept in
`meta`, so deleting the newest events is caught too. SQLite triggers refuse UPDATE and
DELETE on the table; `verify` catches what is done around them. Record the head printed by
`consentmatch audit --verify` somewhere else to anchor the chain.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime, timezone
from typing import Any

from .results import AuditCheck, AuditEvent

__all__ = ["ACTIONS", "append", "events", "verify"]

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
    "export",
    "key-rotate",
)


def _ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _digest(seq: int, at: str, actor: str, action: str, subject: str | None, purpose: str | None,
            details: str, prev_hash: str) -> str:
    canonical = json.dumps([seq, at, actor, action, subject, purpose, details, prev_hash], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _head(conn: sqlite3.Connection) -> tuple[int, str]:
    (value,) = conn.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
    seq, _, digest = str(value).partition(":")
    return int(seq), digest.lower()


def append(
    conn: sqlite3.Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject: str | None = None,
    purpose: str | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """Append one event inside the caller's transaction; returns its seq."""
    assert action in ACTIONS, action
    seq, prev = _head(conn)
    seq += 1
    text = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    moment = _ts(at)
    digest = _digest(seq, moment, actor, action, subject, purpose, text, prev)
    conn.execute(
        "INSERT INTO audit (seq, at, actor, action, subject, purpose, details, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?)",
        (seq, moment, actor, action, subject, purpose, text, prev, digest),
    )
    conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"{seq}:{digest}",))
    return seq


def events(conn: sqlite3.Connection, subject: str | None = None) -> list[AuditEvent]:
    """Events in order, all or one subject's."""
    query = "SELECT seq, at, actor, action, subject, purpose, details, prev_hash, hash FROM audit"
    if subject:  # events about them, and searches that returned them among others
        query += """ WHERE subject = :subject
                     OR EXISTS (SELECT 1 FROM json_each(details, '$.subjects') WHERE value = :subject)"""
    rows = conn.execute(query + " ORDER BY seq", {"subject": subject})
    return [
        AuditEvent(
            seq=int(seq), at=datetime.fromisoformat(at), actor=actor, action=action, subject=subj, purpose=purpose,
            details=json.loads(details), prev_hash=prev, hash=digest,
        )
        for seq, at, actor, action, subj, purpose, details, prev, digest in rows
    ]


def verify(conn: sqlite3.Connection) -> AuditCheck:
    """Walk the chain from the first event; report the first link that does not hold."""
    head_seq, head_hash = _head(conn)
    expected_seq, prev = 1, GENESIS
    count = 0
    rows = conn.execute("SELECT seq, at, actor, action, subject, purpose, details, prev_hash, hash FROM audit ORDER BY seq")
    for seq, at, actor, action, subject, purpose, details, prev_hash, digest in rows:
        count += 1
        if seq != expected_seq:
            problem = f"event {expected_seq} is missing (next is {seq})" if seq > expected_seq else f"event {seq} is out of order"
            return AuditCheck(False, count, head_hash, broken_at=expected_seq, problem=problem)
        if prev_hash != prev:
            return AuditCheck(False, count, head_hash, broken_at=seq, problem=f"event {seq} does not follow event {seq - 1} (inserted or replaced)")
        if _digest(seq, at, actor, action, subject, purpose, details, prev_hash) != digest:
            return AuditCheck(False, count, head_hash, broken_at=seq, problem=f"event {seq} was edited (its hash does not match its content)")
        prev, expected_seq = digest, seq + 1
    if (expected_seq - 1, prev) != (head_seq, head_hash):
        return AuditCheck(
            False, count, head_hash, broken_at=expected_seq,
            problem=f"the chain ends at event {expected_seq - 1} but the recorded head is event {head_seq} (events deleted)",
        )
    return AuditCheck(True, count, head_hash)
