"""A PostgreSQL connection that takes the sqlite3 calls the gallery's queries make.

The SQLite rows (`sqlite_rows.py`, `sqlite_integrity.py`, `sqlite_audit.py`) and the key ring
(`keyring.py`) are written in SQL that both engines run, except for two habits of sqlite3,
which `PgConnection` adapts, so that one set of queries serves both stores (`postgres_rows.py`
overrides the few that differ in substance):

- qmark (`?`) and named (`:name`) parameters become psycopg's `%s` and `%(name)s`;
- `BEGIN IMMEDIATE` (take the write lock now) becomes `BEGIN` and a transaction-level advisory
  lock, and a cursor's `lastrowid` is the session's `lastval()`.

The connection is in autocommit mode, as sqlite3's with `isolation_level=None`: transactions
are the explicit `BEGIN` ... `COMMIT` of the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from .dialect import POSTGRES

__all__ = ["PgConnection", "PgCursor"]

def pg_sql(sql: str, named: bool) -> str:
    """`sql` as psycopg takes it (see the module docstring; `Dialect.sql`)."""
    return POSTGRES.sql(sql, named)


class PgCursor:
    """A query's result, as sqlite3's cursor offers it."""

    def __init__(self, conn: PgConnection, cursor: psycopg.Cursor[Any]) -> None:
        self._conn = conn
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int:
        (value,) = self._conn.raw.execute("SELECT lastval()").fetchone() or (0,)
        return int(value)

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchmany(self, size: int) -> list[Any]:
        return self._cursor.fetchmany(size) if self._cursor.description else []

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor) if self._cursor.description else iter(())


class PgConnection:
    """A psycopg connection (autocommit) behind sqlite3's `execute` / `executemany` / `in_transaction`.

    Args:
        raw: the connection.
        lock_id: the advisory lock `BEGIN IMMEDIATE` takes (one per kind of store).
        reconnect: opens a new connection when this one was lost (a long-lived connection, as
            the key ring's: a restarted server fails one call, and the next one connects again).
    """

    def __init__(
        self, raw: psycopg.Connection[Any], lock_id: int, reconnect: Callable[[], psycopg.Connection[Any]] | None = None
    ) -> None:
        self.raw = raw
        self._lock_id = lock_id
        self._reconnect = reconnect

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = (), /) -> PgCursor:
        if self._reconnect is not None and not self.in_transaction:
            try:
                return self._execute(sql, parameters)
            except psycopg.OperationalError:
                if not self.raw.broken:
                    raise
                self.raw.close()  # lost (a restarted server): outside a transaction nothing ran, so run it again
                self.raw = self._reconnect()
        return self._execute(sql, parameters)

    def _execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any]) -> PgCursor:
        if sql.strip().upper() == "BEGIN IMMEDIATE":
            self.raw.execute("BEGIN")
            return PgCursor(self, self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,)))
        named = isinstance(parameters, Mapping)
        return PgCursor(self, self.raw.execute(pg_sql(sql, named), parameters, binary=True))

    def executemany(self, sql: str, parameters: Any, /) -> None:
        rows = list(parameters)
        if rows:
            named = isinstance(rows[0], Mapping)
            with self.raw.cursor(binary=True) as cursor:
                cursor.executemany(pg_sql(sql, named), rows)

    def close(self) -> None:
        self.raw.close()
