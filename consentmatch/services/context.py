"""What every service shares: the store, settings, encoder, clock, default actor, lock and index
cache of one open gallery, and the small steps several services take (the time, the actor, a
subject by name, its retention date, recording a refused call)."""

from __future__ import annotations

import difflib
import getpass
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import vision
from ..errors import (
    ConsentError,
    ConsentMatchError,
    FaceError,
    ImageError,
    InvalidArgumentError,
    PermissionDeniedError,
    PolicyError,
    SubjectNotFoundError,
)
from ..retention import destroy_by
from ..search.cache import IndexCache
from ..settings import Settings
from ..storage import KeyRing, Store, Transaction, open_store
from ..text import check_text, visible
from ..vision.types import Encoder

__all__ = [
    "Clock", "Context", "REFUSALS", "check_declared", "check_name", "check_new_name", "default_actor", "region_error",
    "utcnow",
]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def default_actor() -> str:
    try:
        return f"local:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "local:unknown"


#: A subject name or actor as stored: NFC, trimmed, printable.
check_name = check_text


def check_new_name(name: object, what: str) -> str:
    """A name about to be created (a subject, an API key): `check_name`, and no `/` (nor "." or
    ".."), which no URL path segment can carry (the service's `/v1/subjects/{subject}` could never reach it).
    Names stored before this rule stay readable: lookups use `check_name`."""
    text = check_name(name, what)
    if "/" in text:
        raise InvalidArgumentError(f"'{visible(text)}' is not a valid {what}: it holds '/', which no URL can carry; "
                                   "use another character, e.g. '-'.")
    if text in (".", ".."):  # a dot segment: every URL client resolves `/v1/subjects/..` (and `%2E%2E`) away
        raise InvalidArgumentError(f"'{text}' is not a valid {what}: a path segment of dots, which no URL can carry; "
                                   "use a name with another character.")
    return text


class _RegionError(PolicyError):
    """A photo taken in an excluded region: audited without the region (the trail holds no location).
    Private, so the audit names it by its public base class, PolicyError."""


def check_declared(
    tx: Transaction, purpose: str, now: datetime, error: type[ConsentMatchError] = InvalidArgumentError,
    fix: str = "`consentmatch purpose list` shows them.",
) -> None:
    """Raise `error` unless the gallery declares `purpose`, naming the closest declared one: a typo
    must not read as "nobody consented" (a declared purpose nobody covers is an answer)."""
    declared = [name for name, *_ in tx.purposes(now)]
    if purpose in declared:
        return
    close = difflib.get_close_matches(purpose, declared, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise error(f"'{purpose}' is not a purpose this gallery serves: {hint}{fix}")


def region_error(message: str) -> PolicyError:
    """The refusal of a photo taken in a region the policy excludes."""
    return _RegionError(message)


_REGION_REASON = "a photo was taken in a region this gallery's policy excludes (by its GPS metadata)"

#: Errors that refuse a call (recorded in the audit trail); usage and storage errors are not refusals.
REFUSALS = (ConsentError, SubjectNotFoundError, PolicyError, FaceError, ImageError)
#: What `record_refusal` records: the refusals, and the service's 403s (a key outside its role or purposes).
_RECORDED = (*REFUSALS, PermissionDeniedError)


@dataclass
class Context:
    """One open gallery, as its services see it. The lock guards the index cache and the
    store's writes of this gallery object; encoding runs outside it."""

    store: Store
    settings: Settings
    encoder: Encoder
    clock: Clock
    actor: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    cache: IndexCache = field(init=False)
    #: API keys whose scrypt check passed in this process (digests of stored hash + key): checked once.
    verified_keys: set[str] = field(default_factory=set)
    #: The key ring the store was opened with (`open`), for its `created_key_file`.
    keys: KeyRing | None = None

    def __post_init__(self) -> None:
        self.cache = IndexCache(self.store, self.lock)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, encoder: Encoder | None, clock: Clock | None, actor: str | None,
        key: bytes | str | None, key_dir: str | os.PathLike[str] | None, settings: Settings | None, existing: bool,
    ) -> Context:
        """Open the gallery at `path` (a file or a PostgreSQL URL) as `Gallery(...)` documents its arguments.

        Raises:
            GalleryNotFoundError: `existing` and no gallery there (a mistyped path is not an empty gallery).
            EncryptionKeyError: `key` is not a key.
        """
        settings = settings if settings is not None else Settings.from_env()
        keys = KeyRing(key, key_dir, settings)
        store = open_store(os.fspath(path), keys, settings)
        if existing and not store.exists():
            try:
                with store.read():  # GalleryNotFoundError, in the store's words (a URL without its password)
                    pass
            finally:
                store.close()
        return cls(store=store, settings=settings, keys=keys,
                   encoder=encoder if encoder is not None else vision.default_encoder(settings), clock=clock or utcnow,
                   actor=check_name(actor, "actor") if actor else default_actor())

    def close(self) -> None:
        """Save a large index for the next open (`search/snapshot.py`), close the store, drop the index."""
        with self.lock:
            self.cache.close()
            self.store.close()

    @property
    def path(self) -> Path:
        return self.store.path

    def now(self) -> datetime:
        return self.clock().astimezone(timezone.utc)

    def who(self, actor: str | None) -> str:
        """The actor of a call: its own, else the gallery's."""
        return check_name(actor, "actor") if actor else self.actor

    @staticmethod
    def subject_id(tx: Transaction, name: str) -> int:
        found = tx.subject_id(name)
        if found is None:
            raise SubjectNotFoundError(f"'{name}' is not enrolled in this gallery: check the name with `consentmatch subjects`.")
        return found

    @staticmethod
    def subject_name(tx: Transaction, subject_id: int) -> str:
        return tx.subject_names([subject_id])[subject_id]

    @staticmethod
    def refresh_retention(tx: Transaction, subject_id: int, now: datetime) -> None:
        """Work out the subject's destroy-by date again from their consents and last interaction."""
        terms, enrolled, last = tx.retention_terms(subject_id)
        date, rule = destroy_by(terms, enrolled, last)
        tx.set_retention(subject_id, date, rule)

    @contextmanager
    def refusals(self, action: str, subject: str | None, purpose: str | None, actor: str | None) -> Iterator[None]:
        """Record the call in the audit trail when it is refused (`record_refusal`), then let the error go on."""
        try:
            yield
        except REFUSALS as exc:
            self.record_refusal(action, subject, purpose, actor, exc)
            raise

    def record_refusal(
        self, action: str, subject: str | None, purpose: str | None, actor: str | None, error: Exception,
        details: dict[str, str] | None = None,
    ) -> None:
        """Audit a refused call: outcome "refused", the error's class and message (never a face or
        a location), under the subject named; `details`: more of the call (the service's route).
        In its own transaction, never creating a gallery file; a record that cannot be written
        never hides the refusal itself."""
        if not isinstance(error, _RECORDED) or not self.store.exists():
            return
        try:
            name = check_name(subject, "subject name") if subject is not None else None
        except InvalidArgumentError:
            name = None
        kind = next(c.__name__ for c in type(error).__mro__ if not c.__name__.startswith("_"))
        reason = _REGION_REASON if isinstance(error, _RegionError) else str(error)
        with suppress(Exception), self.lock, self.store.write(bump=False) as tx:  # the refusal is what the caller must see
            tx.append_audit(at=self.now(), actor=self.who(actor), action=action, subject=name, purpose=purpose,
                            details={**(details or {}), "outcome": "refused", "error": kind, "reason": reason})
