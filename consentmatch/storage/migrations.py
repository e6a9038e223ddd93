"""Numbered schema steps of an SQLite gallery. Step N brings a gallery from `user_version` N-1 to N;
never edit a shipped step.

A step is SQL (a script) or Python (a function given the connection, inside the step's
transaction). Templates are 128 little-endian float32 (512 bytes), sealed since step 3 (see
storage/keyring.py). Times are fixed-width ISO 8601 UTC text, so SQL compares them as strings.
Steps that need the gallery's keys (binding older rows) run at the first open with the keys
(`SqliteStore._open_keys`), not here: a migration runs before the keys are known.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Union

__all__ = ["APPLICATION_ID", "MIGRATIONS", "Step", "run_step"]

#: A schema step: an SQL script, or a function run on the connection.
Step = Union[str, Callable[[sqlite3.Connection], None]]

#: SQLite `application_id` marking a file as a consentmatch gallery ("CMAT").
APPLICATION_ID = 0x434D4154

MIGRATIONS: tuple[Step, ...] = (
    # 1: subjects, their consents and purposes, their templates; a generation counter.
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('generation', '0');

    CREATE TABLE subjects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );

    CREATE TABLE consents (
        id INTEGER PRIMARY KEY,
        subject_id INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
        reference TEXT NOT NULL UNIQUE,
        granted_at TEXT NOT NULL,
        expires_at TEXT,
        jurisdiction TEXT
    );
    CREATE INDEX consents_subject ON consents(subject_id);

    CREATE TABLE consent_purposes (
        consent_id INTEGER NOT NULL REFERENCES consents(id) ON DELETE CASCADE,
        purpose TEXT NOT NULL,
        PRIMARY KEY (purpose, consent_id)
    ) WITHOUT ROWID;

    CREATE TABLE templates (
        id INTEGER PRIMARY KEY,
        subject_id INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
        consent_id INTEGER NOT NULL REFERENCES consents(id) ON DELETE CASCADE,
        embedding BLOB NOT NULL CHECK (length(embedding) = 512),
        photo_sha256 TEXT NOT NULL,
        box TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX templates_subject ON templates(subject_id);
    CREATE INDEX templates_consent ON templates(consent_id);
    """,
    # 2: consent records as evidence (signer, release hash, notice, revocation, e-mail hash),
    #    retention dates per subject, the gallery policy, the opt-out registry, the audit trail.
    """
    ALTER TABLE consents ADD COLUMN signer TEXT NOT NULL DEFAULT 'subject';
    ALTER TABLE consents ADD COLUMN evidence_sha256 TEXT;
    ALTER TABLE consents ADD COLUMN notice_version TEXT;
    ALTER TABLE consents ADD COLUMN email_hash TEXT;
    ALTER TABLE consents ADD COLUMN revoked_at TEXT;
    CREATE INDEX consents_email ON consents(email_hash);

    ALTER TABLE subjects ADD COLUMN last_interaction_at TEXT;
    ALTER TABLE subjects ADD COLUMN destroy_by TEXT;
    ALTER TABLE subjects ADD COLUMN destroy_rule TEXT;

    CREATE TABLE policy (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE optouts (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('subject', 'email')),
        value TEXT NOT NULL,
        added_at TEXT NOT NULL,
        UNIQUE (kind, value)
    );

    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT,
        purpose TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_subject ON audit(subject);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    INSERT INTO meta (key, value) VALUES ('audit_head', '0:' || hex(zeroblob(32)));
    INSERT INTO meta (key, value) VALUES ('optout_salt', lower(hex(randomblob(16))));
    """,
    # 3: templates sealed with per-subject data keys (AES-256-GCM, keys outside the file): the
    #    embedding column holds nonce + ciphertext + tag; ids never reused; a gallery id names
    #    the gallery's key files. Plaintext rows of step 2 are sealed at the next open.
    """
    CREATE TABLE templates_sealed (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        subject_id INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
        consent_id INTEGER NOT NULL REFERENCES consents(id) ON DELETE CASCADE,
        embedding BLOB NOT NULL,
        photo_sha256 TEXT NOT NULL,
        box TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    INSERT INTO templates_sealed (id, subject_id, consent_id, embedding, photo_sha256, box, created_at)
        SELECT id, subject_id, consent_id, embedding, photo_sha256, box, created_at FROM templates;
    DROP TABLE templates;
    ALTER TABLE templates_sealed RENAME TO templates;
    CREATE INDEX templates_subject ON templates(subject_id);
    CREATE INDEX templates_consent ON templates(consent_id);
    ALTER TABLE subjects ADD COLUMN key_id TEXT;
    INSERT INTO meta (key, value) VALUES ('gallery_id', lower(hex(randomblob(16))));
    """,
    # 4: a random stamp of the templates' state, new with every row added, changed or deleted
    #    (cascades included), so an index snapshot (snapshot.py) is used only for the very
    #    templates it was saved from; a counter could repeat after a backup is restored.
    """
    INSERT INTO meta (key, value) VALUES ('templates_state', lower(hex(randomblob(16))));
    CREATE TRIGGER templates_state_insert AFTER INSERT ON templates
        BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'templates_state'; END;
    CREATE TRIGGER templates_state_update AFTER UPDATE ON templates
        BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'templates_state'; END;
    CREATE TRIGGER templates_state_delete AFTER DELETE ON templates
        BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'templates_state'; END;
    """,
    # 5: subject and consent rows carry a MAC under the gallery's MAC key (kept with the data
    #    keys, sqlite_integrity.py), and templates are bound to their subject by their associated data: a
    #    writer of the file alone can no longer rename a subject or add a purpose unnoticed. The
    #    open that first has the keys binds the existing rows, once (the key store records it).
    #    A consent's purposes are read by consent for its MAC: an index for that.
    #    E-mail hashes are keyed by the MAC key from now on; the salt in this file stays only
    #    while hashes made with it are stored.
    """
    ALTER TABLE subjects ADD COLUMN mac TEXT;
    ALTER TABLE consents ADD COLUMN mac TEXT;
    CREATE INDEX consent_purposes_consent ON consent_purposes(consent_id);
    DELETE FROM meta WHERE key = 'optout_salt'
        AND NOT EXISTS (SELECT 1 FROM optouts WHERE kind = 'email')
        AND NOT EXISTS (SELECT 1 FROM consents WHERE email_hash IS NOT NULL);
    """,
    # 6: the purposes the gallery serves (a Python step: declared now, in the store's time format).
    lambda conn: _declare_purposes(conn),
    # 7: which face detector found each template's face ("hog", "yunet"); NULL for templates
    #    enrolled before this step, which all came from dlib's HOG detector.
    """
    ALTER TABLE templates ADD COLUMN detector TEXT;
    """,
    # 8: the service (`consentmatch serve`): API keys (a salted scrypt hash, never the key), search
    #    requests held for a department's approval (the probe sealed under a data key of its own),
    #    and the remembered answers of calls retried with an Idempotency-Key. Keys and requests
    #    carry a MAC like subjects and consents.
    """
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        secret_hash TEXT NOT NULL,
        roles TEXT NOT NULL,
        purposes TEXT NOT NULL,
        expires TEXT,
        rate_limit INTEGER,
        created_at TEXT NOT NULL,
        revoked_at TEXT,
        mac TEXT NOT NULL
    );
    CREATE TABLE search_requests (
        request_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        requester TEXT NOT NULL,
        purpose TEXT NOT NULL,
        subject TEXT,
        case_ref TEXT NOT NULL,
        reason TEXT NOT NULL,
        tolerance REAL,
        top_k INTEGER,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        decided_by TEXT,
        decided_at TEXT,
        decision_reason TEXT,
        result TEXT,
        error TEXT,
        probe_key TEXT,
        probe BLOB,
        mac TEXT NOT NULL
    );
    CREATE INDEX search_requests_status ON search_requests(status, created_at);
    CREATE TABLE idempotency (
        owner TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (owner, key)
    );
    """,
)


def _declare_purposes(conn: sqlite3.Connection) -> None:
    """Step 6: a table of declared purposes, holding the purposes of every consent recorded so far
    (so a gallery made before it keeps matching exactly as it did)."""
    from datetime import datetime, timezone

    from ..audit import timestamp

    conn.execute("CREATE TABLE purposes (name TEXT PRIMARY KEY, declared_at TEXT NOT NULL)")
    now = timestamp(datetime.now(timezone.utc))
    conn.execute("INSERT INTO purposes (name, declared_at) SELECT DISTINCT purpose, ? FROM consent_purposes", (now,))


def run_step(conn: sqlite3.Connection, step: Step) -> None:
    """Run one step inside the caller's transaction."""
    if callable(step):
        step(conn)
        return
    for statement in _statements(step):
        conn.execute(statement)


def _statements(script: str) -> Iterator[str]:
    """The complete SQL statements of a script (a trigger's inner `;` does not end one)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()
