"""One write sequence for every store: the engines supply hooks, the order of the steps is kept here.

A write is: map the engine's errors; take this process's turn (`_turn`) and a connection (`_writer`);
begin, holding the engine's write lock, and read the generation (`_begin`); run the caller's
work with new subjects' keys stored before the commit (`KeyRing.deferred`); move the generation
(`_move`); commit; after the commit, tell the listeners (`_told`). Whatever fails on the way
rolls back (`_roll_back`). SQLite (`sqlite.py`) and PostgreSQL (`postgres.py`) differ only in
those hooks; a third engine is its dialect plus the same hooks (storage/base.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from .base import Commit
from .keyring import KeyRing
from .sqlite_rows import SqliteTransaction

__all__ = ["StoreCore"]

TxT = TypeVar("TxT", bound=SqliteTransaction)


class StoreCore(Generic[TxT]):
    """What every store does alike: its listeners, and the write sequence around the engine's hooks."""

    keys: KeyRing
    _listeners: list[Callable[[Commit], None]]

    def on_commit(self, listener: Callable[[Commit], None]) -> None:
        """Call `listener` after every write that bumps the generation commits."""
        self._listeners.append(listener)

    @contextmanager
    def write(self, *, create: bool = False, bump: bool = True) -> Iterator[TxT]:
        """One atomic write: everything inside commits together, or nothing does.

        Only `create=True` (enrollment) may bring a missing gallery into being. `bump=False` for
        writes that change no template or consent (audit events, interactions), so in-memory
        indexes stay valid. After a bumping write commits, the listeners hear of it (`on_commit`).
        """
        with self._mapped():
            self._ready(create)
            with self._transaction(create=create, bump=bump) as tx:
                yield tx

    @contextmanager
    def _transaction(self, *, create: bool = False, bump: bool) -> Iterator[TxT]:
        """The write sequence on a store whose schema and keys are ready (`write`, or the open's own
        repairs); `tx.bump` may be changed by the work inside."""
        with self._turn():
            with self._writer(create) as conn:
                try:
                    tx, before = self._begin(conn)
                    tx.bump = bump
                    with self.keys.deferred():  # new subjects' keys: one key-store write, before the commit
                        yield tx
                    if tx.bump:
                        self._move(tx, before + 1)
                    conn.execute("COMMIT")
                except BaseException:
                    self._roll_back(conn)
                    raise
            if tx.bump:
                self._told(before, tx)

    def _tell(self, before: int, added: list[tuple[int, NDArray[np.float32]]], removed: list[int]) -> None:
        """Tell the listeners of a committed write from generation `before` (none listening, as in a
        bulk load: no vectors gathered)."""
        if not self._listeners:
            return
        ids = np.array([i for i, _ in added], dtype=np.int64)
        vectors = np.stack([v for _, v in added]) if added else np.empty((0, 0), dtype=np.float32)
        self._call(Commit(before, before + 1, ids, vectors, np.array(removed, dtype=np.int64)))

    def _call(self, commit: Commit) -> None:
        for listener in self._listeners:
            listener(commit)

    # -- the engine's hooks -----------------------------------------------------------------------

    def _mapped(self) -> AbstractContextManager[None]:
        """The engine's errors as StorageError, with advice."""
        raise NotImplementedError

    def _ready(self, create: bool) -> None:
        """Open the store before a write takes its turn, when opening may itself write (or nothing)."""

    def _turn(self) -> AbstractContextManager[Any]:
        """Held from before the write begins until the listeners were told (SQLite: its one
        connection's lock, so listeners hear of commits in their order), or nothing."""
        return nullcontext()

    def _writer(self, create: bool) -> AbstractContextManager[Any]:
        """This process's turn at the engine, and a connection, held until the commit or rollback."""
        raise NotImplementedError

    def _begin(self, conn: Any) -> tuple[TxT, int]:
        """Begin the write holding the engine's write lock; the transaction and its generation."""
        raise NotImplementedError

    def _move(self, tx: TxT, after: int) -> None:
        """Move the generation to `after` (and whatever else the engine records of the write)."""
        raise NotImplementedError

    def _roll_back(self, conn: Any) -> None:
        """Roll back whatever is open after a failure."""
        raise NotImplementedError

    def _told(self, before: int, tx: TxT) -> None:
        """After the commit: tell the listeners."""
        self._tell(before, tx.added, tx.removed)
