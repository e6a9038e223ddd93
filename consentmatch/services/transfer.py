"""Copying a gallery to another store (`consentmatch copy`): SQLite -> PostgreSQL and back, so a
customer moves to many machines (or back) without enrolling anyone again.

The source is opened as usual (older schemas are brought up to date, rows bound), and its audit
chain and every row's integrity are checked before anything is written; the rows and wrapped
data keys move in one transaction of the target (storage/transfer.py); then the copy is opened
afresh and checked the same way, and its chain must end at the source's head.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StorageError, TamperingError
from ..results import AuditCheck, CopyReport
from ..settings import Settings
from ..storage import KeyRing, Store, Transaction, open_store
from ..storage.transfer import copy_rows

__all__ = ["copy_gallery"]


def copy_gallery(
    source: str | os.PathLike[str], target: str | os.PathLike[str], settings: Settings,
    key_dir: str | os.PathLike[str] | None = None,
) -> CopyReport:
    """Copy the gallery at `source` to the new gallery `target` (a file path or a postgresql:// URL).

    Both use the same gallery key (the copy keeps the gallery's id, so the same key file or
    CONSENTMATCH_KEY opens it); the copy gets its own data-key store (SECURITY.md): a PostgreSQL
    copy in its keys database, a file copy in `key_dir`, where the gallery key file is copied too.

    Raises:
        GalleryNotFoundError: no gallery at `source`.
        TamperingError: the source's audit chain or a row fails its check (nothing is copied), or the copy's does.
        StorageError: `target` holds a gallery already, or cannot be written, or the copy would
            share the source's data keys (a file copy in the same key folder).
    """
    to_settings = settings if key_dir is None else settings.replace(key_dir=Path(key_dir))
    from_store = open_store(os.fspath(source), KeyRing(settings=settings), settings)
    to_store = open_store(os.fspath(target), KeyRing(settings=to_settings), to_settings)
    try:
        with from_store.read() as tx:
            before = _checked(tx, from_store, "nothing was copied; restore the gallery from a backup")
            _own_key_store(from_store, to_store)
            counts = copy_rows(from_store, tx.conn, to_store)  # type: ignore[attr-defined]
    finally:
        from_store.close()
        to_store.close()
    copied = open_store(os.fspath(target), KeyRing(settings=to_settings), to_settings)
    try:
        with copied.read() as tx:
            after = _checked(tx, copied, "delete the copy and copy again")
    finally:
        copied.close()
    if (after.events, after.head) != (before.events, before.head):
        raise StorageError(f"The copy at '{_shown(copied)}' does not end its audit chain where the source does: delete it and copy again.")
    return CopyReport(
        source=_shown(from_store), target=_shown(to_store), subjects=counts["subjects"],
        templates=counts["templates"], consents=counts["consents"], audit_events=after.events, audit_head=after.head,
    )


def _own_key_store(source: Store, target: Store) -> None:
    """Two files in one key folder would share one data-key store: forgetting someone in the
    copy would shred them in the source too (and the reverse), so such a copy is refused."""
    if source.keys.keys_at is None and target.keys.keys_at is None and (
            source.keys.key_dir.resolve() == target.keys.key_dir.resolve()):
        raise StorageError(
            f"The copy '{_shown(target)}' would share the data keys of '{_shown(source)}' (one key folder, "
            f"{source.keys.key_dir}), so forgetting someone in either would erase them in both: give the copy "
            "a key folder of its own with --key-dir DIR (and open it with CONSENTMATCH_KEY_DIR=DIR)."
        )


def _checked(tx: Transaction, store: Store, advice: str) -> AuditCheck:
    """The gallery's audit chain, walked, and every row checked against its MAC or seal."""
    check = tx.verify_audit()
    problem = check.problem if not check.intact else tx.check_all()
    if problem is not None:
        raise TamperingError(f"Gallery '{_shown(store)}': {problem}: {advice}.", row=problem)
    return check


def _shown(store: Store) -> str:
    """A store's location as messages show it: the file, or the URL without its password."""
    return str(getattr(store, "location", store.path))
