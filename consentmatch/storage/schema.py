"""The gallery's tables, declared once: both engines' CREATE statements are rendered from `TABLES`.

A new gallery is created from this spec at the last schema step (`render(dialect)`); the
numbered steps (`migrations.py`, `postgres_schema.py`) only bring galleries written before up to
it, and `tests/test_schema_spec.py` checks that an empty file taken through every SQLite step
ends with exactly what the spec renders. A column has a portable kind, which each dialect spells
(`Dialect.types`); the triggers that keep part of the contract (the audit trail is append-only,
any change of a template renews the templates stamp: storage/base.py) are written once per
engine below, as its procedural SQL differs too much to render.

Change the schema by editing the spec AND adding a step for galleries that exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dialect import Dialect

__all__ = ["TABLES", "Column", "Index", "Table", "render"]


@dataclass(frozen=True)
class Column:
    """A column: its portable kind ("key": the table's own integer id, "ref": another table's id,
    "integer", "text", "bytes", "real", "boolean"), and its constraints."""

    name: str
    kind: str
    not_null: bool = False
    unique: bool = False
    default: str | None = None  # an SQL literal
    check: str | None = None  # an SQL expression over the column
    references: str | None = None  # "table(column)", deleted with it (ON DELETE CASCADE)


@dataclass(frozen=True)
class Index:
    """A named index. A trailing integer key column is implicit in SQLite's indexes (the rowid)
    and not written there."""

    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of the gallery. `only`: the engine that alone has it (PostgreSQL's change log)."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()  # a composite or text key (a "key" column is its own)
    unique: tuple[tuple[str, ...], ...] = ()
    indexes: tuple[Index, ...] = ()
    autoincrement: bool = False  # SQLite: ids are never reused (PostgreSQL's identity never reuses them)
    without_rowid: bool = False  # SQLite's storage of a table keyed by its primary key alone
    only: str | None = None


def _text(name: str, *, not_null: bool = False, **kw: object) -> Column:
    return Column(name, "text", not_null=not_null, **kw)  # type: ignore[arg-type]


def _key(name: str = "id") -> Column:
    return Column(name, "key")


TABLES: tuple[Table, ...] = (
    Table("meta", (_text("key"), _text("value", not_null=True)), primary_key=("key",)),
    Table("subjects", (
        _key(), _text("name", not_null=True, unique=True), _text("created_at", not_null=True),
        _text("last_interaction_at"), _text("destroy_by"), _text("destroy_rule"), _text("key_id"), _text("mac"),
    )),
    Table("consents", (
        _key(), Column("subject_id", "ref", not_null=True, references="subjects(id)"),
        _text("reference", not_null=True, unique=True), _text("granted_at", not_null=True), _text("expires_at"),
        _text("jurisdiction"), _text("signer", not_null=True, default="'subject'"), _text("evidence_sha256"),
        _text("notice_version"), _text("email_hash"), _text("revoked_at"), _text("mac"),
    ), indexes=(Index("consents_subject", ("subject_id",)), Index("consents_email", ("email_hash",)))),
    Table("consent_purposes", (
        Column("consent_id", "ref", not_null=True, references="consents(id)"), _text("purpose", not_null=True),
    ), primary_key=("purpose", "consent_id"), indexes=(Index("consent_purposes_consent", ("consent_id",)),),
        without_rowid=True),
    Table("templates", (
        _key(), Column("subject_id", "ref", not_null=True, references="subjects(id)"),
        Column("consent_id", "ref", not_null=True, references="consents(id)"), Column("embedding", "bytes", not_null=True),
        _text("photo_sha256", not_null=True), _text("box", not_null=True), _text("created_at", not_null=True),
        _text("detector"),
    ), indexes=(Index("templates_subject", ("subject_id", "id")), Index("templates_consent", ("consent_id",))),
        autoincrement=True),
    Table("template_changes", (
        Column("generation", "ref", not_null=True), Column("template_id", "ref", not_null=True),
        Column("added", "boolean", not_null=True), _text("mac"),
    ), indexes=(Index("template_changes_generation", ("generation",)),), only="postgresql"),
    Table("policy", (_text("key"), _text("value", not_null=True)), primary_key=("key",)),
    Table("optouts", (
        _key(), _text("kind", not_null=True, check="kind IN ('subject', 'email')"), _text("value", not_null=True),
        _text("added_at", not_null=True),
    ), unique=(("kind", "value"),)),
    Table("purposes", (_text("name"), _text("declared_at", not_null=True)), primary_key=("name",)),
    Table("audit", (
        Column("seq", "ref"), _text("at", not_null=True), _text("actor", not_null=True), _text("action", not_null=True),
        _text("subject"), _text("purpose"), _text("details", not_null=True), _text("prev_hash", not_null=True),
        _text("hash", not_null=True),
    ), primary_key=("seq",), indexes=(Index("audit_subject", ("subject",)),)),
    Table("api_keys", (
        _text("key_id"), _text("name", not_null=True, unique=True), _text("secret_hash", not_null=True),
        _text("roles", not_null=True), _text("purposes", not_null=True), _text("expires"),
        Column("rate_limit", "integer"), _text("created_at", not_null=True), _text("revoked_at"),
        _text("mac", not_null=True),
    ), primary_key=("key_id",)),
    Table("search_requests", (
        _text("request_id"), _text("kind", not_null=True), _text("status", not_null=True),
        _text("requester", not_null=True), _text("purpose", not_null=True), _text("subject"),
        _text("case_ref", not_null=True), _text("reason", not_null=True), Column("tolerance", "real"),
        Column("top_k", "integer"), _text("created_at", not_null=True), _text("expires_at", not_null=True),
        _text("decided_by"), _text("decided_at"), _text("decision_reason"), _text("result"), _text("error"),
        _text("probe_key"), Column("probe", "bytes"), _text("mac", not_null=True),
    ), primary_key=("request_id",), indexes=(Index("search_requests_status", ("status", "created_at")),)),
    Table("idempotency", (
        _text("owner", not_null=True), _text("key", not_null=True), _text("fingerprint", not_null=True),
        Column("status", "integer", not_null=True), _text("body", not_null=True), _text("created_at", not_null=True),
    ), primary_key=("owner", "key")),
)

#: The meta rows a new gallery starts with (values are SQL; `{random}` is the dialect's random hex).
_META: tuple[tuple[str, str, str | None], ...] = (
    ("generation", "'0'", None),
    ("audit_head", "'0:" + "0" * 64 + "'", None),
    ("gallery_id", "{random}", None),
    ("templates_state", "{random}", None),
    ("changes_from", "'0'", "postgresql"),  # the change log's start (postgres.py)
)

#: The contract's triggers, one script per engine (their procedural SQL cannot be rendered alike).
TRIGGERS: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit\n"
        "    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit\n"
        "    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
        *(f"CREATE TRIGGER templates_state_{event.lower()} AFTER {event} ON templates\n"
          "    BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'templates_state'; END"
          for event in ("INSERT", "UPDATE", "DELETE")),
    ),
    "postgresql": (
        """CREATE FUNCTION consentmatch_templates_state() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- a bulk load (PgStore.loading) renews the stamp once, at its end: one row updated a
            -- million times in one transaction would cost time growing with each update
            IF current_setting('consentmatch.loading', true) IS DISTINCT FROM 'on' THEN
                UPDATE meta SET value = replace(CAST(gen_random_uuid() AS text), '-', '') WHERE key = 'templates_state';
            END IF;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER templates_state AFTER INSERT OR UPDATE OR DELETE ON templates\n"
        "    FOR EACH STATEMENT EXECUTE FUNCTION consentmatch_templates_state()",
        "CREATE FUNCTION consentmatch_append_only() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "    BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$",
        "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit\n"
        "    FOR EACH ROW EXECUTE FUNCTION consentmatch_append_only()",
        "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit\n"
        "    FOR EACH STATEMENT EXECUTE FUNCTION consentmatch_append_only()",
    ),
}


def render(dialect: Dialect) -> list[str]:
    """The statements that create a new gallery's tables, indexes, triggers and meta rows on `dialect`'s engine."""
    statements: list[str] = []
    for table in TABLES:
        if table.only not in (None, dialect.name):
            continue
        statements.append(_create(table, dialect))
        key = [c.name for c in table.columns if c.kind == "key"]
        for index in table.indexes:
            columns = index.columns
            if dialect.name == "sqlite" and len(columns) > 1 and list(columns[-1:]) == key:
                columns = columns[:-1]  # SQLite ends every index with the rowid by itself
            statements.append(f"CREATE INDEX {index.name} ON {table.name}({', '.join(columns)})")
    statements.extend(TRIGGERS[dialect.name])
    rows = [f"('{key}', {value.format(random=dialect.random_hex)})"
            for key, value, only in _META if only in (None, dialect.name)]
    statements.append(f"INSERT INTO meta (key, value) VALUES {', '.join(rows)}")
    return statements


def _create(table: Table, dialect: Dialect) -> str:
    lines = []
    for column in table.columns:
        if column.kind == "key":
            spelled = dialect.types["key"] + (" AUTOINCREMENT" if table.autoincrement and dialect.name == "sqlite" else "")
            lines.append(f"{column.name} {spelled}")
            continue
        parts = [column.name, dialect.types[column.kind]]
        if table.primary_key == (column.name,):
            parts.append("PRIMARY KEY")  # on the column, as SQLite numbers its automatic indexes in this order
        if column.not_null:
            parts.append("NOT NULL")
        if column.unique:
            parts.append("UNIQUE")
        if column.default is not None:
            parts.append(f"DEFAULT {column.default}")
        if column.check is not None:
            parts.append(f"CHECK ({column.check})")
        if column.references is not None:
            parts.append(f"REFERENCES {column.references} ON DELETE CASCADE")
        lines.append(" ".join(parts))
    if len(table.primary_key) > 1:
        lines.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
    lines.extend(f"UNIQUE ({', '.join(columns)})" for columns in table.unique)
    body = ",\n    ".join(lines)
    tail = " WITHOUT ROWID" if table.without_rowid and dialect.name == "sqlite" else ""
    return f"CREATE TABLE {table.name} (\n    {body}\n){tail}"
