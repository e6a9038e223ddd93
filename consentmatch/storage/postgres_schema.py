"""Numbered schema steps of a PostgreSQL gallery written before the table spec, and its keys
database. A new gallery is created from the spec (schema.py); these steps bring an older one up to
it. Never edit a shipped step.

Step N mirrors the SQLite gallery's steps (`migrations.py`): step 1 is SQLite's steps 1-7, step 2 its
step 8, column for column, so that the
same queries (`sqlite_rows.py`) and the same MACs serve both, and `consentmatch copy` moves
rows between them unchanged: times are the same fixed-width ISO 8601 UTC text, compared as
text (collation "C", as SQLite compares); templates are the same sealed bytes (BYTEA). Two
additions serve several nodes: `template_changes`, the template rows each generation added or
deleted (a node's index catches up from it: postgres.py), and `consentmatch_schema`, the step
reached (SQLite's `user_version`). Steps run under an advisory lock (`PgStore._migrate`).
"""

from __future__ import annotations

__all__ = ["KEYS_SCHEMA", "STEPS"]

# Every text column compares as SQLite compares: byte by byte (names are listed and times compared).
_TEXT = 'TEXT COLLATE "C"'

STEPS: tuple[str, ...] = (
    # 1: the SQLite gallery at step 7, plus the change log of templates by generation. A new
    #    gallery is created from the table spec (schema.py) at the last step instead, so no schema
    #    runs this step again: its text is in this file's history (the spec renders the same tables).
    "",
    # 2: SQLite's step 8, the service: API keys, search requests held for approval (the probe
    #    sealed under a data key of its own), remembered answers of idempotent calls.
    f"""
    CREATE TABLE api_keys (
        key_id {_TEXT} PRIMARY KEY,
        name {_TEXT} NOT NULL UNIQUE,
        secret_hash {_TEXT} NOT NULL,
        roles {_TEXT} NOT NULL,
        purposes {_TEXT} NOT NULL,
        expires {_TEXT},
        rate_limit INTEGER,
        created_at {_TEXT} NOT NULL,
        revoked_at {_TEXT},
        mac {_TEXT} NOT NULL
    );
    CREATE TABLE search_requests (
        request_id {_TEXT} PRIMARY KEY,
        kind {_TEXT} NOT NULL,
        status {_TEXT} NOT NULL,
        requester {_TEXT} NOT NULL,
        purpose {_TEXT} NOT NULL,
        subject {_TEXT},
        case_ref {_TEXT} NOT NULL,
        reason {_TEXT} NOT NULL,
        tolerance DOUBLE PRECISION,
        top_k INTEGER,
        created_at {_TEXT} NOT NULL,
        expires_at {_TEXT} NOT NULL,
        decided_by {_TEXT},
        decided_at {_TEXT},
        decision_reason {_TEXT},
        result {_TEXT},
        error {_TEXT},
        probe_key {_TEXT},
        probe BYTEA,
        mac {_TEXT} NOT NULL
    );
    CREATE INDEX search_requests_status ON search_requests(status, created_at);
    CREATE TABLE idempotency (
        owner {_TEXT} NOT NULL,
        key {_TEXT} NOT NULL,
        fingerprint {_TEXT} NOT NULL,
        status INTEGER NOT NULL,
        body {_TEXT} NOT NULL,
        created_at {_TEXT} NOT NULL,
        PRIMARY KEY (owner, key)
    );
    """,
    # 3: each change-log row carries a MAC (PgTransaction.change_mac), so a forged row is refused by
    #    the catch-up (the index is rebuilt) and reported by `audit --verify`. Rows written before
    #    have none: the log restarts at the current generation (a node further behind rebuilds).
    f"""
    ALTER TABLE template_changes ADD COLUMN mac {_TEXT};
    DELETE FROM template_changes;
    UPDATE meta SET value = (SELECT value FROM meta WHERE key = 'generation') WHERE key = 'changes_from';
    """,
)

#: The keys database: the data keys, each wrapped by the gallery key, and the key check (keyring.py).
KEYS_SCHEMA = """
    CREATE TABLE IF NOT EXISTS deks (key_id TEXT COLLATE "C" PRIMARY KEY, wrapped BYTEA NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL);
"""
