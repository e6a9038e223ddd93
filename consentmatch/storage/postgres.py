"""PostgreSQL: one gallery shared by several machines. Connections, schema steps, keys, transactions.

A gallery is one database (`postgresql://user@host/db`); its data keys live in a second one,
`<db>_keys` on the same server, so that a dump or backup of the gallery never holds them
(SECURITY.md). Each node keeps its own FAISS index (search/cache.py) and learns that the
gallery moved in two ways:

- every transaction reads the generation in its own snapshot, and before it is handed out the
  store tells its listeners what other nodes committed since they last heard (`_catch_up`,
  from the `template_changes` log): a search that starts after a commit on any node sees it;
- every bumping commit sends a NOTIFY, which a watcher thread turns into that same catch-up at
  once, so the next search finds the index already current.

Writes hold the gallery's generation row (`SELECT ... FOR UPDATE`) from their start to their
commit: writers on all nodes take turns, as SQLite's do, so the audit chain stays one chain and
the consent-reference rules hold across nodes. Schema steps run under an advisory lock. The
queries are `postgres_rows.PgTransaction`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import GalleryNotFoundError, StorageError
from .base import Commit
from .dialect import POSTGRES
from .keyring import KeyDb, KeyRing
from .lifecycle import StoreCore
from .postgres_conn import PgConnection
from .postgres_rows import PgTransaction
from .postgres_schema import KEYS_SCHEMA, STEPS
from .schema import render

__all__ = ["PgStore", "shown_url"]

_GALLERY_LOCK = 0x434D4154_0001  # advisory lock ids: schema steps of a gallery ("CMAT" 1)
_KEYS_LOCK = 0x434D4154_0002  # writes of its keys database
_CHANNEL = "consentmatch"
_CONNECT_TIMEOUT_S = 5
_POOL_TIMEOUT_S = 5.0  # how long a call waits for a connection before StorageError
_CHANGES_KEPT = 1000  # generations of template changes kept: a node further behind reloads its index


def shown_url(url: str) -> str:
    """The URL as messages show it: never its password."""
    url = re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


class PgStore(StoreCore[PgTransaction]):
    """A gallery in a PostgreSQL database. Opened lazily: reads of a missing gallery raise, the first write creates it.

    Args:
        url: `postgresql://user[:password]@host[:port]/database[?...]` (libpq's URL).
        keys: its key ring; its data keys are kept in the database `<database>_keys`.
        quality: the quality bar a gallery without one in its policy has (Settings.quality).
        cache_dir: this node's folder for the index snapshot (`path`).
    """

    def __init__(self, url: str, keys: KeyRing, *, quality: str | None = None, cache_dir: Path) -> None:
        self.url = url
        self.location = shown_url(url)
        self.keys = keys
        self.quality = quality
        #: This node's own file for the gallery (its index snapshot is `<path>.index`): nothing is shared.
        self.path = cache_dir / "galleries" / f"{hashlib.sha256(self.location.encode()).hexdigest()[:16]}.gallery"
        try:
            info = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StorageError(
                f"'{self.location}' is not a PostgreSQL URL libpq reads ({_first_line(exc)}): "
                "write postgresql://user@host[:port]/database."
            ) from None
        self._keys_db = f"{info.get('dbname') or info.get('user') or 'consentmatch'}_keys"
        keys.keep_keys_in(self._connect_keys, f"PostgreSQL database {self._keys_db}")
        self._pool: ConnectionPool | None = None
        self._opened = False
        self._open_lock = threading.Lock()
        self._write_lock = threading.RLock()  # this process's writes take turns here before the database's lock
        self._listeners: list[Callable[[Commit], None]] = []
        self._known: int | None = None  # the generation the listeners have heard of
        self._known_lock = threading.Lock()
        self._writing = False  # a write of this store is between its commit and its announcement
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- connections and errors -----------------------------------------------------------

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """psycopg's errors as StorageError, in one line, with advice."""
        try:
            yield
        except (psycopg.OperationalError, PoolTimeout) as exc:
            text = _first_line(exc) or "no answer"
            raise StorageError(
                f"Gallery '{self.location}': the database is unreachable ({text}): check that the server runs and "
                "the URL is right, then retry; nothing was changed."
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StorageError(
                f"Gallery '{self.location}': {_first_line(exc)}: grant the database user the privileges "
                "README.md lists under 'Many machines'."
            ) from None
        except psycopg.Error as exc:
            raise StorageError(f"Gallery '{self.location}': {_first_line(exc)}.") from None

    def _connect(self, conninfo: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(conninfo or self.url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)

    def exists(self) -> bool:
        if self._opened:
            return True
        with self._mapped(), self._connect() as conn:
            return conn.execute("SELECT to_regclass('consentmatch_schema') IS NOT NULL").fetchone() == (True,)

    def _open(self, create: bool) -> ConnectionPool:
        """Connect, create or migrate the schema, open the keys; once per store."""
        with self._open_lock:
            if self._opened and self._pool is not None:
                return self._pool
            with self._connect() as conn:
                found = conn.execute("SELECT to_regclass('consentmatch_schema') IS NOT NULL").fetchone() == (True,)
                if not found and not create:
                    raise GalleryNotFoundError(
                        f"No gallery at '{self.location}': enroll someone to create it, or check --gallery / CONSENTMATCH_GALLERY."
                    )
                self._migrate(conn)
            if self._pool is None:
                pool: ConnectionPool = ConnectionPool(
                    self.url, min_size=1, max_size=4, open=False, timeout=_POOL_TIMEOUT_S,
                    kwargs={"autocommit": True, "connect_timeout": _CONNECT_TIMEOUT_S},
                    check=ConnectionPool.check_connection, name="consentmatch",
                )
                pool.open(wait=True, timeout=_POOL_TIMEOUT_S)
                self._pool = pool
            self._open_keys(self._pool)
            with contextlib.suppress(OSError):  # this node's folder for the index snapshot (a cache: optional)
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._opened = True
            if self._listeners and self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="consentmatch-notify", daemon=True)
                self._watcher.start()
            return self._pool

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create a new gallery from the table spec (schema.py), or apply an older one's missing steps,
        in one transaction under an advisory lock: nodes starting at once take
        turns. The lock is the session's, taken before the transaction begins, so the transaction's
        view of the catalog is from after the previous holder's commit."""
        conn.execute("SELECT pg_advisory_lock(%s)", (_GALLERY_LOCK,))
        try:
            with conn.transaction():
                row = conn.execute("SELECT to_regclass('consentmatch_schema') IS NOT NULL").fetchone()
                if row != (True,):
                    tables = conn.execute(
                        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
                    ).fetchone()
                    if tables and tables[0]:
                        raise StorageError(
                            f"'{self.location}' holds tables but no consentmatch gallery: name an empty database."
                        )
                    conn.execute("CREATE TABLE consentmatch_schema (version INTEGER NOT NULL)")
                    conn.execute("INSERT INTO consentmatch_schema (version) VALUES (0)")
                (version,) = conn.execute("SELECT version FROM consentmatch_schema").fetchone() or (0,)
                found = version
                if version > len(STEPS):
                    raise StorageError(
                        f"'{self.location}' was written by a newer consentmatch (schema {version}): upgrade consentmatch."
                    )
                if version == 0:  # a new gallery: the spec's tables at once, at the last step
                    conn.execute(";\n".join(render(POSTGRES)).encode())
                    version = len(STEPS)
                for step in STEPS[version:]:
                    conn.execute(step.encode())
                if found < len(STEPS):  # nodes that only use the gallery need no more than DML grants
                    conn.execute("UPDATE consentmatch_schema SET version = %s", (len(STEPS),))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_GALLERY_LOCK,))

    def _connect_keys(self) -> KeyDb:
        """The keys database (created on the same server when missing, if the user may), with its tables."""
        conninfo = make_conninfo(self.url, dbname=self._keys_db)
        try:
            raw = self._connect(conninfo)
        except psycopg.OperationalError as exc:
            if "does not exist" not in str(exc):
                raise
            with self._connect() as conn:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._keys_db)))
                except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                    pass  # another node created it first
                except psycopg.errors.InsufficientPrivilege:
                    raise StorageError(
                        f"The data keys of '{self.location}' live in the database {self._keys_db}, which does not exist "
                        "and this user may not create: create it (README.md, 'Many machines')."
                    ) from None
            raw = self._connect(conninfo)
        if raw.execute("SELECT to_regclass('deks') IS NULL").fetchone() == (True,):
            raw.execute("SELECT pg_advisory_lock(%s)", (_KEYS_LOCK,))  # before the transaction: see `_migrate`
            try:
                with raw.transaction():
                    raw.execute(KEYS_SCHEMA.encode())
            finally:
                raw.execute("SELECT pg_advisory_unlock(%s)", (_KEYS_LOCK,))
        return PgConnection(raw, _KEYS_LOCK, reconnect=lambda: self._connect(conninfo))

    def _open_keys(self, pool: ConnectionPool) -> None:
        """Open the gallery's keys; drop rows whose key was shredded (a backup restored after an
        erasure: those subjects stay erased). Scans only when the keys' shred stamp moved since
        the gallery last recorded it, as on SQLite (`SqliteStore._open_keys`)."""
        with pool.connection() as raw:
            conn = PgConnection(raw, _GALLERY_LOCK)
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('gallery_id', 'keys', 'keys_checked')").fetchall())
            created = self.keys.open(str(meta["gallery_id"]), created="keys" in meta, create=True)
            if created:
                self.keys.set_bound()  # a PostgreSQL gallery is bound from its first row
            event = self.keys.unrecorded_rotation()
            self.keys.mac_key()
            PgTransaction(conn, self).mark_api_keys()
            stamp = self.keys.shred_stamp()
            if not created and event is None and meta.get("keys_checked") == stamp:
                return
        with self._transaction(bump=False) as tx:
            known = self.keys.key_ids()
            rows = tx.conn.execute("SELECT id, key_id FROM subjects WHERE key_id IS NOT NULL").fetchall()
            shredded = [int(i) for i, k in rows if k not in known]
            tx.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('keys_checked', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (stamp,),
            )
            if created:
                tx.conn.execute("INSERT INTO meta (key, value) VALUES ('keys', 'created') ON CONFLICT DO NOTHING")
            if event is not None:
                tx.record_rotation(event)
            for subject_id in shredded:
                tx.removed.extend(tx.drop_shredded(subject_id))
            tx.bump = bool(tx.removed)
        if event is not None:
            self.keys.rotation_recorded(event)

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[PgTransaction]:
        """A consistent snapshot for several queries (REPEATABLE READ, read only)."""
        with self._mapped():
            pool = self._open(create=False)
            with pool.connection() as raw:
                raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    tx = PgTransaction(PgConnection(raw, _GALLERY_LOCK), self)
                    self._catch_up(tx, tx.generation())
                    yield tx
                finally:
                    _end(raw)

    # -- the write sequence's hooks (storage/lifecycle.py): the listeners also hear of other nodes'
    #    commits (`_catch_up`), and other nodes of this one's (NOTIFY, `_record`)

    def _ready(self, create: bool) -> None:
        self._open(create=create)  # before the write lock: the open may write (`_open_keys`)

    @contextmanager
    def _writer(self, create: bool) -> Iterator[psycopg.Connection[Any]]:
        assert self._pool is not None
        with self._write_lock, self._pool.connection() as raw:
            yield raw

    def _begin(self, raw: psycopg.Connection[Any]) -> tuple[PgTransaction, int]:
        """Begin holding the generation row until the commit: writers on every node take turns."""
        raw.execute("BEGIN")
        (value,) = raw.execute("SELECT value FROM meta WHERE key = 'generation' FOR UPDATE").fetchone() or ("0",)
        tx = PgTransaction(PgConnection(raw, _GALLERY_LOCK), self)
        self._catch_up(tx, int(value))
        return tx, int(value)

    def _move(self, tx: PgTransaction, after: int) -> None:
        self._record(tx, after)
        with self._known_lock:
            self._writing = True  # this commit is announced by this thread (`_told`), not a catch-up

    def _roll_back(self, raw: psycopg.Connection[Any]) -> None:
        with self._known_lock:
            self._writing = False
        _end(raw)

    def _told(self, before: int, tx: PgTransaction) -> None:
        """Tell the listeners of this node's own commit (unless a catch-up already told them)."""
        with self._known_lock:
            self._writing = False
            if self._known is not None and self._known != before:
                return
            self._known = before + 1
        self._tell(before, tx.added, tx.removed)

    @contextmanager
    def loading(self) -> Iterator[PgConnection]:
        """The gallery's schema with no rows and no keys, for a copy to fill in one transaction
        (storage/transfer.py): nothing stays written if the copy fails.

        Raises:
            StorageError: the database holds a gallery already.
        """
        with self._mapped(), self._connect() as raw:
            self._migrate(raw)
            with raw.transaction():
                if raw.execute("SELECT 1 FROM audit LIMIT 1").fetchone() is not None:
                    raise StorageError(f"'{self.location}' holds a gallery already: name an empty database to copy to.")
                raw.execute("SET LOCAL consentmatch.loading = 'on'")  # the templates' stamp: renewed once, below
                yield PgConnection(raw, _GALLERY_LOCK)
                for table in ("subjects", "consents", "templates", "optouts"):  # new rows' ids follow the copied ones
                    raw.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 0) + 1, false) FROM {table}")
                raw.execute("UPDATE meta SET value = replace(CAST(gen_random_uuid() AS text), '-', '') WHERE key = 'templates_state'")

    def _record(self, tx: PgTransaction, after: int) -> None:
        """Move the generation, log the template rows this write added and deleted, and tell the other nodes."""
        conn = tx.conn
        conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(after),))
        changes = [(int(i), True) for i, _ in tx.added] + [(int(i), False) for i in tx.removed]
        conn.executemany("INSERT INTO template_changes (generation, template_id, added, mac) VALUES (?, ?, ?, ?)",
                         [(after, i, added, tx.change_mac(after, i, added, len(changes))) for i, added in changes])
        if after % _CHANGES_KEPT == 0:
            kept_from = after - _CHANGES_KEPT
            conn.execute("DELETE FROM template_changes WHERE generation <= ?", (kept_from,))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'changes_from'", (str(kept_from),))
        conn.execute("SELECT pg_notify(?, ?)", (_CHANNEL, str(after)))

    def _catch_up(self, tx: PgTransaction, generation: int) -> None:
        """Tell the listeners what was committed (by any node) between the generation they know and
        `generation`, as `tx` sees it: one `Commit` with the net template rows added and deleted.
        Further behind than the change log reaches: a commit from generation -1, which drops an index."""
        if not self._listeners:
            return
        with self._known_lock:
            known = self._known
            if self._writing or (known is not None and known >= generation):
                return  # a commit of this node's own is being announced: its writer tells it, with its vectors
            self._known = generation
        if known is None:
            return  # nothing heard before: whatever index exists is checked against the generation itself
        (start,) = tx.conn.execute("SELECT value FROM meta WHERE key = 'changes_from'").fetchone()
        if known < int(start) or not self._followed(tx, known, generation):
            empty = np.empty(0, dtype=np.int64)
            commit = Commit(-1, generation, empty, np.empty((0, 0), dtype=np.float32), empty)
        else:
            rows = tx.conn.execute(
                "SELECT template_id, added FROM template_changes WHERE generation > ? AND generation <= ?", (known, generation)
            ).fetchall()
            removed = {int(i) for i, added in rows if not added}
            ids, vectors = tx.templates_by_id(np.array(sorted({int(i) for i, added in rows if added} - removed), dtype=np.int64))
            commit = Commit(known, generation, ids, vectors, np.array(sorted(removed), dtype=np.int64))
        self._call(commit)

    @staticmethod
    def _followed(tx: PgTransaction, known: int, generation: int) -> bool:
        """Whether the change log from `known` to `generation` can be followed: every row holds its
        MAC and no template it says was deleted still exists. Otherwise (rows forged by a writer of
        the database) the listeners drop their index, to be rebuilt from the templates themselves."""
        if tx.forged_changes(known, generation):
            return False
        row = tx.conn.execute(
            "SELECT count(*) FROM templates WHERE id IN (SELECT template_id FROM template_changes "
            "WHERE generation > ? AND generation <= ? AND NOT added)", (known, generation),
        ).fetchone()
        return row is not None and int(row[0]) == 0

    def _watch(self) -> None:
        """LISTEN for other nodes' commits and catch up at once (the watcher thread). A lost
        connection is opened again; a missed notification only delays the catch-up to the next call."""
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {_CHANNEL}")
                    while not self._stop.is_set():
                        if any(True for _ in conn.notifies(timeout=0.5)) and not self._stop.is_set():
                            with self.read():
                                pass
            except Exception:  # the database restarting, the store closing: try again shortly
                self._stop.wait(1.0)

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints by itself (templates are sealed in its WAL too)."""

    def close(self) -> None:
        self._stop.set()
        with self._open_lock:
            if self._pool is not None:
                self._pool.close(timeout=1.0)
                self._pool = None
            self._opened = False
        self.keys.close()


def _end(raw: psycopg.Connection[Any]) -> None:
    """Roll back whatever is still open on a connection going back to the pool (a lost one is discarded there)."""
    try:
        raw.rollback()
    except psycopg.Error:
        pass


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0].strip()
