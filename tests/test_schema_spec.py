"""The table spec (storage/schema.py) is the schema: a new gallery of each engine has exactly what
it renders, and an SQLite file taken through every numbered step ends there too (so galleries
written before the spec, migrated at their next open, have the very schema of new ones).

Compared from each engine's catalog, in detail: columns in order with their types, nullability,
defaults and keys; indexes; foreign keys; constraints; triggers (and PostgreSQL's trigger
functions); the meta rows a gallery starts with."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from consentmatch.storage.dialect import POSTGRES, SQLITE
from consentmatch.storage.migrations import MIGRATIONS, run_step
from consentmatch.storage.postgres import PgStore
from consentmatch.storage.schema import TABLES, render
from consentmatch.storage.sqlite import SqliteStore

from .pg import Cluster

#: Meta rows whose values are random or set by later steps: compared by key only.
_ANY_VALUE = {"gallery_id", "templates_state"}


def _sqlite_catalog(conn: sqlite3.Connection) -> dict[str, Any]:
    catalog: dict[str, Any] = {}
    for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"):
        indexes = {}
        for _, index, unique, origin, partial in conn.execute(f"PRAGMA index_list({name})"):
            columns = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({index})"))
            indexes[index] = (unique, origin, partial, columns)
        text = " ".join(sql.upper().split())
        catalog[name] = {
            "columns": [tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({name})")],
            "indexes": indexes,
            "references": sorted(tuple(r[2:]) for r in conn.execute(f"PRAGMA foreign_key_list({name})")),
            "flags": ("AUTOINCREMENT" in text, text.endswith("WITHOUT ROWID"), text.count("CHECK (")),
        }
    catalog["triggers"] = sorted(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"))
    catalog["meta"] = _meta(conn.execute("SELECT key, value FROM meta").fetchall())
    return catalog


def _meta(rows: list[Any]) -> dict[str, Any]:
    return {key: (None if key in _ANY_VALUE else value) for key, value in rows}


def _rendered_sqlite(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in render(SQLITE):
        conn.execute(statement)
    try:
        return _sqlite_catalog(conn)
    finally:
        conn.close()


def test_a_new_sqlite_gallery_has_what_the_spec_renders(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "new.db").loading():
        pass
    conn = sqlite3.connect(tmp_path / "new.db")
    fresh = _sqlite_catalog(conn)
    conn.close()
    assert fresh == _rendered_sqlite(tmp_path / "rendered.db")


def test_every_sqlite_step_ends_at_the_spec(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "stepped.db", isolation_level=None)
    for step in MIGRATIONS:
        run_step(conn, step)
    stepped = _sqlite_catalog(conn)
    conn.close()
    assert stepped == _rendered_sqlite(tmp_path / "rendered.db")


def _pg_catalog(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        def rows(query: str) -> list[Any]:
            return sorted(tuple(r) for r in conn.execute(query))

        here = "table_schema = current_schema() AND table_name <> 'consentmatch_schema'"
        return {
            "columns": rows(f"""SELECT table_name, row_number() OVER (PARTITION BY table_name ORDER BY ordinal_position),
                                       column_name, data_type, is_nullable, column_default,
                                       collation_name, is_identity, identity_generation
                                FROM information_schema.columns WHERE {here}"""),
            "indexes": rows("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                            "AND tablename <> 'consentmatch_schema'"),
            "constraints": rows("""SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
                                   FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
                                   AND conrelid::regclass::text <> 'consentmatch_schema'"""),
            "triggers": rows("SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal"),
            "functions": [(name, " ".join(source.split())) for name, source in rows(
                "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = current_schema()::regnamespace")],
            "meta": _meta(conn.execute("SELECT key, value FROM meta").fetchall()),
        }


def test_a_new_postgres_gallery_has_what_the_spec_renders(pg_url: str, pg_cluster: Cluster, tmp_path: Path) -> None:
    from consentmatch.storage.keyring import KeyRing

    with PgStore(pg_url, KeyRing(), cache_dir=tmp_path).loading():
        pass
    rendered = pg_cluster.new_database()
    with psycopg.connect(rendered, autocommit=True) as conn, conn.transaction():
        conn.execute(";\n".join(render(POSTGRES)).encode())
    assert _pg_catalog(pg_url) == _pg_catalog(rendered)


def test_the_spec_names_each_column_once_and_each_kind_is_spelled_by_both_dialects() -> None:
    for table in TABLES:
        names = [c.name for c in table.columns]
        assert len(names) == len(set(names)), table.name
        for column in table.columns:
            assert column.kind in SQLITE.types and column.kind in POSTGRES.types, (table.name, column.name)
        for index in table.indexes:
            assert set(index.columns) <= set(names), index.name
            assert re.fullmatch(r"\w+", index.name)


def test_a_postgres_gallery_at_step_1_reaches_the_spec(pg_url: str, pg_cluster: Cluster, tmp_path: Path) -> None:
    """A schema as step 1 left it (the spec less what steps 2 and 3 add) is brought to the spec by them."""
    from consentmatch.storage.keyring import KeyRing

    with psycopg.connect(pg_url, autocommit=True) as conn, conn.transaction():
        conn.execute(";\n".join(render(POSTGRES)).encode())
        conn.execute("DROP TABLE api_keys, search_requests, idempotency")
        conn.execute("ALTER TABLE template_changes DROP COLUMN mac")
        conn.execute("CREATE TABLE consentmatch_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO consentmatch_schema (version) VALUES (1)")
    with PgStore(pg_url, KeyRing(), cache_dir=tmp_path).loading():
        pass
    fresh = pg_cluster.new_database()
    with PgStore(fresh, KeyRing(), cache_dir=tmp_path).loading():
        pass
    assert _pg_catalog(pg_url) == _pg_catalog(fresh)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM consentmatch_schema").fetchone() == (3,)
