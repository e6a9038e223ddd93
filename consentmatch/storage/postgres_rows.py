"""The rows of a PostgreSQL gallery: the SQLite queries, where PostgreSQL differs in substance.

`PgTransaction` is what `PgStore.read()` and `.write()` yield. Its schema is the SQLite
gallery's (`postgres_schema.py`) and its connection takes sqlite3's calls (`postgres_conn.py`),
so every query of `SqliteTransaction` runs as it is, sealing and unsealing included, except
those here: JSON functions, an upsert, and the lock on the audit chain's head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import TamperingError
from .sqlite_rows import SqliteTransaction

if TYPE_CHECKING:
    from .postgres import PgStore
    from .postgres_conn import PgConnection

__all__ = ["PgTransaction"]


class PgTransaction(SqliteTransaction):
    """One transaction on a PostgreSQL gallery: a read snapshot, or a write that commits as a whole."""

    consent_fields = (
        "c.id, c.subject_id, c.reference, c.granted_at, c.expires_at, c.jurisdiction, c.signer, c.evidence_sha256, "
        "c.notice_version, c.email_hash, c.revoked_at, "
        "(SELECT CAST(coalesce(json_agg(p.purpose), '[]') AS text) FROM consent_purposes p WHERE p.consent_id = c.id)"
    )
    mentions = """(subject = :subject
                  OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(CAST(details AS jsonb) -> 'subjects') v WHERE v = :subject)
                  OR EXISTS (SELECT 1 FROM jsonb_array_elements(CAST(details AS jsonb) -> 'shown') v
                             WHERE v ->> 'subject' = :subject))"""
    rotation_id = "CAST(details AS jsonb) ->> 'rotation'"

    def __init__(self, conn: PgConnection, store: PgStore) -> None:
        super().__init__(conn, store)  # type: ignore[arg-type]
        self.location = store.location
        self.bump = True  # whether the write moves the generation (PgStore._transaction)

    def _tampered(self, what: str) -> TamperingError:
        return TamperingError(
            f"Gallery '{self.location}': {what} fails its integrity check (edited outside consentmatch): "
            "restore the gallery from a backup.",
            row=what,
        )

    def shred(self, key_ids: Sequence[str | None]) -> None:
        """As on SQLite: the data keys go (from the keys database), and the gallery records the new shred stamp."""
        self.keys.shred([k for k in key_ids if k])
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('keys_checked', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (self.keys.shred_stamp(),),
        )

    def append_audit(self, **event: Any) -> int:
        """Append one event, holding the chain's head row until the commit: writers on every node
        make one chain (a write transaction already holds the generation row; this says it here)."""
        if self._head is None:  # the first event of this transaction: later ones hold the row already
            self.conn.execute("SELECT value FROM meta WHERE key = 'audit_head' FOR UPDATE")
        return super().append_audit(**event)

    def change_mac(self, generation: int, template_id: int, added: bool, count: int) -> str:
        """The MAC of a change-log row: its generation, template and direction, and how many rows
        its generation logged (a row taken out of a generation fails the others' MACs)."""
        return self._mac(["change", generation, template_id, added, count])

    def forged_changes(self, after: int, upto: int) -> bool:
        """Whether any change-log row of generations in (after, upto] fails its MAC."""
        rows = self.conn.execute(
            "SELECT generation, template_id, added, mac FROM template_changes WHERE generation > ? AND generation <= ?",
            (after, upto),
        ).fetchall()
        counts: dict[int, int] = {}
        for generation, *_ in rows:
            counts[int(generation)] = counts.get(int(generation), 0) + 1
        return any(not self._holds(["change", int(g), int(t), bool(a), counts[int(g)]], m) for g, t, a, m in rows)

    def check_all(self) -> str | None:
        """As on SQLite, then the template change log the nodes' indexes follow."""
        problem = super().check_all()
        if problem is None and self.forged_changes(-1, 2**62):
            return "the template change log"
        return problem

    def templates_by_id(self, template_ids: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """These templates, unsealed in memory (those gone or shredded left out): what another node
        added, for this node's index (`PgStore._catch_up`)."""
        self.keys.load_all()
        return self._unsealed(self.conn.execute(
            """SELECT t.id, t.subject_id, s.name, s.key_id, t.embedding FROM templates t
               JOIN subjects s ON s.id = t.subject_id WHERE t.id = ANY(?) ORDER BY t.id""",
            (list(map(int, template_ids)),),
        ))
