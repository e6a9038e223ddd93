"""The rows of a PostgreSQL gallery: the SQLite queries, where PostgreSQL differs in substance.

`PgTransaction` is what `PgStore.read()` and `.write()` yield. Its schema is the SQLite
gallery's (`postgres_schema.py`), its connection takes sqlite3's calls (`postgres_conn.py`) and
its `dialect` spells what the engines say differently (JSON functions, the lock on the audit
chain's head: dialect.py), so every query of `SqliteTransaction` runs as it is, sealing and
unsealing included; here are only what a shared store adds: the change log's MACs and the
templates another node added.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from ..errors import TamperingError
from .dialect import POSTGRES
from .postgres_conn import PgConnection
from .sqlite_rows import SqliteTransaction, StoreInfo

__all__ = ["PgTransaction"]


class PgStoreInfo(StoreInfo, Protocol):
    """What a PostgreSQL transaction reads of its store: its location too (said in messages)."""

    location: str


class PgTransaction(SqliteTransaction):
    """One transaction on a PostgreSQL gallery: a read snapshot, or a write that commits as a whole."""

    dialect = POSTGRES

    def __init__(self, conn: PgConnection, store: PgStoreInfo) -> None:
        super().__init__(conn, store)  # type: ignore[arg-type]
        self.location = store.location

    def _tampered(self, what: str) -> TamperingError:
        return TamperingError(
            f"Gallery '{self.location}': {what} fails its integrity check (edited outside consentmatch): "
            "restore the gallery from a backup.",
            row=what,
        )

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
