"""The two engines' schemas, compared live: the same tables, columns, types, nullability, keys and
indexes (PostgreSQL's own additions named), and the same contract the triggers keep (an audit row
can be neither changed nor deleted; any change of a template renews the templates stamp).

Both are rendered from one table spec (storage/schema.py; tests/test_schema_spec.py checks the
render and the older galleries' steps against it); this test checks that the two renders say the same."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consentmatch import Consent, Gallery

from .conftest import PURPOSE, FakeEncoder, fake_photo

#: Tables only PostgreSQL has: the change log nodes follow, and its schema version (SQLite's user_version).
PG_ONLY = {"template_changes", "consentmatch_schema"}
#: A column's kind, as either engine spells its type.
KINDS = {"TEXT": "text", "INTEGER": "integer", "BLOB": "bytes", "REAL": "real",
         "text": "text", "bigint": "integer", "integer": "integer", "bytea": "bytes", "double precision": "real",
         "boolean": "integer"}


def _sqlite_schema(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        schema: dict[str, Any] = {}
        for table in tables:
            columns = {}
            for _, name, kind, notnull, _, pk in conn.execute(f"PRAGMA table_info({table})"):
                columns[name] = (KINDS[kind], bool(notnull) or pk > 0)
            keys = tuple(r[1] for r in sorted(conn.execute(f"PRAGMA table_info({table})"), key=lambda r: r[5]) if r[5])
            indexes = set()
            for _, index, _unique, origin, _ in conn.execute(f"PRAGMA index_list({table})"):
                if origin == "c":
                    indexes.add(tuple(r[2] for r in conn.execute(f"PRAGMA index_info({index})")))
            references = {(r[3], r[2], r[4], r[6]) for r in conn.execute(f"PRAGMA foreign_key_list({table})")}
            schema[table] = {"columns": columns, "key": keys, "indexes": indexes, "references": references}
        return schema
    finally:
        conn.close()


def _pg_schema(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1")]
        schema: dict[str, Any] = {}
        for table in tables:
            columns = {name: (KINDS[kind], nullable == "NO") for name, kind, nullable in conn.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position", (table,))}
            keys = tuple(r[0] for r in conn.execute(
                """SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
                   AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary
                   ORDER BY array_position(i.indkey, a.attnum)""", (table,)))
            indexes = set()
            for (definition,) in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s "
                "AND indexname NOT LIKE '%%_pkey' AND indexname NOT LIKE '%%_key'", (table,)):
                indexes.add(tuple(c.strip() for c in definition.rsplit("(", 1)[1].rstrip(")").split(",")))
            references = {tuple(r) for r in conn.execute(
                """SELECT kcu.column_name, ccu.table_name, ccu.column_name, rc.delete_rule
                   FROM information_schema.referential_constraints rc
                   JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = rc.constraint_name
                   JOIN information_schema.constraint_column_usage ccu ON ccu.constraint_name = rc.constraint_name
                   WHERE kcu.table_name = %s""", (table,))}
            schema[table] = {"columns": columns, "key": keys, "indexes": indexes, "references": references}
        return schema


@pytest.fixture
def both(pg_url: str, tmp_path: Path) -> tuple[Path, str]:
    """One gallery on each engine, written alike (so every step, and the keys' open, has run)."""
    path = tmp_path / "g.db"
    for location in (path, pg_url):
        with Gallery(location, encoder=FakeEncoder()) as gallery:
            gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
            gallery.create_api_key("desk-1", roles=["operator"], purposes=[PURPOSE])
    return path, pg_url


def _indexes(table: dict[str, Any]) -> set[tuple[str, ...]]:
    """A table's indexes, less a trailing primary key column: SQLite's indexes end with the rowid
    (an `INTEGER PRIMARY KEY`) implicitly, PostgreSQL's name it (`templates_subject`)."""
    key = table["key"]
    return {i[:-1] if len(key) == 1 and len(i) > 1 and i[-1] == key[0] else i for i in table["indexes"]}


def test_both_engines_have_the_same_tables_columns_keys_and_indexes(both: tuple[Path, str]) -> None:
    lite, pg = _sqlite_schema(both[0]), _pg_schema(both[1])
    assert set(pg) - set(lite) == PG_ONLY
    assert set(lite) - set(pg) == set()
    for table in sorted(lite):
        assert lite[table]["columns"] == pg[table]["columns"], table
        assert lite[table]["key"] == pg[table]["key"], table
        assert lite[table]["references"] == pg[table]["references"], table
        assert _indexes(lite[table]) == _indexes(pg[table]), table


@pytest.mark.parametrize("statement", ["UPDATE audit SET actor = 'x'", "DELETE FROM audit"])
def test_both_engines_refuse_to_change_the_audit_trail(both: tuple[Path, str], statement: str) -> None:
    conn = sqlite3.connect(both[0])
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute(statement)
    conn.close()
    with psycopg.connect(both[1]) as pg, pytest.raises(psycopg.Error, match="append-only"):
        pg.execute(statement)


def test_both_engines_renew_the_templates_stamp_on_any_template_change(both: tuple[Path, str]) -> None:
    stamp = "SELECT value FROM meta WHERE key = 'templates_state'"
    conn = sqlite3.connect(both[0], isolation_level=None)
    before = conn.execute(stamp).fetchone()
    conn.execute("UPDATE templates SET photo_sha256 = photo_sha256")
    assert conn.execute(stamp).fetchone() != before
    conn.close()
    with psycopg.connect(both[1], autocommit=True) as pg:
        before = pg.execute(stamp).fetchone()
        pg.execute("UPDATE templates SET photo_sha256 = photo_sha256")
        assert pg.execute(stamp).fetchone() != before
