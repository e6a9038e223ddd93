"""Where one engine's SQL differs from the SQL every engine here speaks: one `Dialect` per engine.

The queries (`sqlite_rows.py`, `sqlite_integrity.py`, `sqlite_audit.py`, `sqlite_access.py`,
`keyring.py`) are written once, in SQL both SQLite and PostgreSQL run (upserts as
`ON CONFLICT ... DO UPDATE`, times as fixed-width text); what they cannot say alike is a field
of the dialect their transaction carries. A third engine is a `Dialect`, a connection taking
these calls, and its store's hooks (open, schema steps, locks, change log): storage/base.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["POSTGRES", "SQLITE", "Dialect"]

_NAMED = re.compile(r"(?<![:\w]):(\w+)")
_EMPTY_IN = re.compile(r"\bIN\s*\(\s*\)", re.IGNORECASE)
_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)


@dataclass(frozen=True)
class Dialect:
    """One engine's spelling of what the common SQL cannot say alike."""

    name: str
    #: A consent's purposes (`c` is the consent row) as JSON array text: part of what its MAC covers.
    purposes_json: str
    #: An audit event names `:subject`, or lists it among a search's subjects or shown candidates.
    audit_mentions: str
    #: A key rotation event's own id, from its details.
    rotation_id: str
    #: Holds the audit chain's head row until the commit (None: the write lock already does).
    lock_audit_head: str | None
    #: Parameters as psycopg takes them (`%s`, `%(name)s`) instead of sqlite3's (`?`, `:name`).
    pyformat: bool

    def sql(self, text: str, named: bool) -> str:
        """`text`, written for sqlite3's driver, as this engine's driver takes it: `?`/`:name`
        parameters, `INSERT OR IGNORE` and an empty `IN ()` spelled for the engine."""
        if not self.pyformat:
            return text
        text = _EMPTY_IN.sub("IN (NULL)", text).replace("%", "%%")
        if _OR_IGNORE.match(text):
            text = _OR_IGNORE.sub("INSERT INTO", text).rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
        return _NAMED.sub(r"%(\1)s", text) if named else text.replace("?", "%s")


SQLITE = Dialect(
    name="sqlite",
    # sorted in Python (`consent_content`): the order json_group_array sees is SQLite's choice
    purposes_json="(SELECT json_group_array(purpose) FROM consent_purposes p WHERE p.consent_id = c.id)",
    audit_mentions="""(subject = :subject OR EXISTS (SELECT 1 FROM json_each(details, '$.subjects') WHERE value = :subject)
                  OR EXISTS (SELECT 1 FROM json_each(details, '$.shown') WHERE json_extract(value, '$.subject') = :subject))""",
    rotation_id="json_extract(details, '$.rotation')",
    lock_audit_head=None,  # BEGIN IMMEDIATE holds the whole file
    pyformat=False,
)

POSTGRES = Dialect(
    name="postgresql",
    purposes_json="(SELECT CAST(coalesce(json_agg(p.purpose), '[]') AS text) FROM consent_purposes p WHERE p.consent_id = c.id)",
    audit_mentions="""(subject = :subject
                  OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(CAST(details AS jsonb) -> 'subjects') v WHERE v = :subject)
                  OR EXISTS (SELECT 1 FROM jsonb_array_elements(CAST(details AS jsonb) -> 'shown') v
                             WHERE v ->> 'subject' = :subject))""",
    rotation_id="CAST(details AS jsonb) ->> 'rotation'",
    # writers on every node make one chain: the first event of a transaction holds the head row
    lock_audit_head="SELECT value FROM meta WHERE key = 'audit_head' FOR UPDATE",
    pyformat=True,
)
