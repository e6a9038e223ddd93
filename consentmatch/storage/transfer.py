"""Copying a gallery between stores (SQLite -> PostgreSQL and back): rows as they are, keys as they are.

Both engines hold the same columns (both rendered from schema.py's table spec), so a copy moves
every row unchanged: templates stay sealed, MACs stay valid (they bind the gallery id, which
the copy keeps), and the data keys move wrapped, never unwrapped, into the copy's own key
store. The source's audit chain and row integrity are checked before anything is written, all
rows are written in one transaction of the target, and the caller checks the copy the same way
(`services/transfer.py`).
"""

from __future__ import annotations

from typing import Any

from .base import Store

__all__ = ["TABLES", "copy_rows"]

#: Each table a gallery copy moves, parents first, with the columns both engines hold.
TABLES: tuple[tuple[str, str], ...] = (
    ("subjects", "id, name, created_at, last_interaction_at, destroy_by, destroy_rule, key_id, mac"),
    ("consents", "id, subject_id, reference, granted_at, expires_at, jurisdiction, signer, evidence_sha256, "
                 "notice_version, email_hash, revoked_at, mac"),
    ("consent_purposes", "consent_id, purpose"),
    ("templates", "id, subject_id, consent_id, embedding, photo_sha256, box, created_at, detector"),
    ("policy", "key, value"),
    ("optouts", "id, kind, value, added_at"),
    ("purposes", "name, declared_at"),
    ("audit", "seq, at, actor, action, subject, purpose, details, prev_hash, hash"),
    ("api_keys", "key_id, name, secret_hash, roles, purposes, expires, rate_limit, created_at, revoked_at, mac"),
    ("search_requests", "request_id, kind, status, requester, purpose, subject, case_ref, reason, tolerance, top_k, "
                        "created_at, expires_at, decided_by, decided_at, decision_reason, result, error, probe_key, "
                        "probe, mac"),
    ("idempotency", "owner, key, fingerprint, status, body, created_at"),
)
#: The gallery's own meta rows a copy keeps: its id (bound into every seal and MAC), the audit
#: chain's head, and what its keys have been checked against.
META_KEYS = ("gallery_id", "audit_head", "keys", "keys_checked", "optout_salt")
_BATCH = 5_000  # rows per insert batch: memory stays flat at a million templates


def copy_rows(source: Store, source_conn: Any, target: Store) -> dict[str, int]:
    """Copy every row `source_conn` (a read transaction of `source`) sees into the empty `target`,
    with the source's wrapped data keys, in one transaction of the target. Returns rows per table.

    Raises:
        StorageError: the target holds a gallery already; EncryptionKeyError: its key store holds keys.
    """
    counts: dict[str, int] = {}
    with target.loading() as conn:
        for table, columns in TABLES:
            marks = ", ".join("?" * len(columns.split(",")))
            cursor = source_conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1")
            counts[table] = 0
            while batch := cursor.fetchmany(_BATCH):
                conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", batch)
                counts[table] += len(batch)
        wanted = ", ".join(f"'{key}'" for key in META_KEYS)
        for key, value in source_conn.execute(f"SELECT key, value FROM meta WHERE key IN ({wanted})").fetchall():
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (key, value))
        assert source.keys.gallery_id is not None
        target.keys.adopt(source.keys.gallery_id, *source.keys.wrapped_keys(), key_file=source.keys.key_file)
    return counts
