"""The audit trail's rows in an SQLite gallery: append, filter, walk. The chain's rules are audit.py's."""

from __future__ import annotations

import json
import secrets
import sqlite3
from datetime import datetime
from typing import Any

from .. import audit
from ..results import AuditCheck, AuditEvent
from .dialect import Dialect

__all__ = ["AuditRows"]

_ts = audit.timestamp


class AuditRows:
    """The audit half of an SQLite transaction (`SqliteTransaction` inherits it)."""

    conn: sqlite3.Connection
    dialect: Dialect  # its JSON functions (`audit_mentions`, `rotation_id`) and the head's lock

    #: The head this transaction last appended: the next event in it chains on without reading it back.
    _head: tuple[int, str] | None = None

    def _audit_head(self) -> tuple[int, str]:
        (value,) = self.conn.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
        seq, _, digest = str(value).partition(":")
        return int(seq), digest.lower()

    def append_audit(
        self, *, at: datetime, actor: str, action: str, subject: str | None = None, purpose: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append one event to the chain inside this transaction; returns its seq."""
        assert action in audit.ACTIONS, action
        if self._head is None and self.dialect.lock_audit_head is not None:  # later events hold it already
            self.conn.execute(self.dialect.lock_audit_head)
        seq, prev = self._head or self._audit_head()
        seq += 1
        text, moment = audit.details_text(details), _ts(at)
        digest = audit.digest(seq, moment, actor, action, subject, purpose, text, prev)
        self.conn.execute(
            "INSERT INTO audit (seq, at, actor, action, subject, purpose, details, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?)",
            (seq, moment, actor, action, subject, purpose, text, prev, digest),
        )
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"{seq}:{digest}",))
        self._head = (seq, digest)
        return seq

    def audit_events(
        self, subject: str | None = None, *, actor: str | None = None, action: str | None = None,
        purpose: str | None = None, since: datetime | None = None, until: datetime | None = None,
    ) -> list[AuditEvent]:
        """Events in order, all or those matching every filter given. `subject`: events naming them,
        and searches that returned or showed them among others; `since`/`until`: inclusive bounds."""
        where: list[str] = []
        if subject:
            where.append(self.dialect.audit_mentions)
        for column, value in (("actor", actor), ("action", action), ("purpose", purpose)):
            if value:
                where.append(f"{column} = :{column}")
        if since is not None:
            where.append("at >= :since")
        if until is not None:
            where.append("at <= :until")
        query = "SELECT seq, at, actor, action, subject, purpose, details, prev_hash, hash FROM audit"
        params = {"subject": subject, "actor": actor, "action": action, "purpose": purpose,
                  "since": _ts(since) if since else None, "until": _ts(until) if until else None}
        rows = self.conn.execute(query + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq", params)
        return [
            AuditEvent(
                seq=int(seq), at=datetime.fromisoformat(at), actor=actor_, action=action_, subject=subj, purpose=purpose_,
                details=json.loads(details), prev_hash=prev, hash=digest,
            )
            for seq, at, actor_, action_, subj, purpose_, details, prev, digest in rows
        ]

    def verify_audit(self) -> AuditCheck:
        """Walk the whole chain against the recorded head."""
        rows = self.conn.execute("SELECT seq, at, actor, action, subject, purpose, details, prev_hash, hash FROM audit ORDER BY seq")
        return audit.check_chain(rows, self._audit_head())

    def rotation_event(self, at: datetime, actor: str, data_keys: int, key_source: str) -> str:
        """A key rotation's audit event, as the text the key store keeps with the rotation until the
        gallery has it (`KeyRing.rotate`): it names the last event before it and has an id of its own."""
        (last,) = self.conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()
        details = {"data_keys": data_keys, "key_source": key_source, "rotation": secrets.token_hex(8)}
        return json.dumps({"at": _ts(at), "actor": actor, "after": int(last), "details": details})

    def record_rotation(self, event: str) -> None:
        """Append a rotation's audit event, unless the trail has it already (it then follows `after`)."""
        fields = json.loads(event)
        details = fields["details"]
        recorded = self.conn.execute(
            f"SELECT 1 FROM audit WHERE seq > ? AND action = 'key-rotate' AND {self.dialect.rotation_id} = ?",
            (fields["after"], details["rotation"]),
        ).fetchone()
        if recorded is None:
            self.append_audit(at=datetime.fromisoformat(fields["at"]), actor=fields["actor"], action="key-rotate",
                              details=details)
