"""The service's rows in an SQLite gallery: API keys, search requests held for approval, and
remembered answers of idempotent calls.

API key and request rows carry a MAC (sqlite_integrity.py) like subjects and consents: a writer
of the file without the keys can neither add a key with the admin role nor approve a request.
A MAC alone cannot tell a row rolled back to an older state it once had, so each live API key
also has a mark in the key store (keyring.py), shredded by its revocation: a revoked key's
row restored from before the revocation is refused, as a restored subject's templates are.
A held probe is sealed under a data key of its own (keyring.py), shredded when the request is
decided or expires, or its subject is erased, so no copy of the file can give the probe back
afterwards.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from .. import audit
from ..crypto import seal, unseal
from ..errors import EncryptionKeyError, InvalidArgumentError, TamperingError
from ..results import ApiKeyInfo, SearchRequest
from .keyring import API_KEY_PREFIX, KeyRing
from .keystore import REQUEST_KEY_PREFIX

__all__ = ["AccessRows"]

_ts = audit.timestamp
_KEY_FIELDS = "key_id, name, secret_hash, roles, purposes, expires, rate_limit, created_at, revoked_at"
_REQUEST_FIELDS = (
    "request_id, kind, status, requester, purpose, subject, case_ref, reason, tolerance, top_k, created_at, "
    "expires_at, decided_by, decided_at, decision_reason, result, error, probe_key"
)


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _api_key(row: Sequence[Any]) -> ApiKeyInfo:
    return ApiKeyInfo(name=row[1], roles=tuple(json.loads(row[3])), purposes=tuple(json.loads(row[4])),
                      expires=_dt(row[5]), rate_limit=row[6], created_at=_dt(row[7]) or datetime.min,
                      revoked_at=_dt(row[8]))


def _request(row: Sequence[Any]) -> SearchRequest:
    return SearchRequest(
        request_id=row[0], kind=row[1], status=row[2], requester=row[3], purpose=row[4], subject=row[5],
        case_ref=row[6], reason=row[7], tolerance=row[8], top_k=row[9], created_at=_dt(row[10]) or datetime.min,
        expires_at=_dt(row[11]) or datetime.min, decided_by=row[12], decided_at=_dt(row[13]),
        decision_reason=row[14], result=json.loads(row[15]) if row[15] else None, error=row[16],
    )


class AccessRows:
    """The service half of an SQLite transaction (`SqliteTransaction` inherits it)."""

    conn: sqlite3.Connection
    keys: KeyRing
    # from sqlite_integrity.Integrity (declared, not defined: a definition here would shadow it)
    _holds: Callable[[list[Any], str | None], bool]
    _mac: Callable[[list[Any]], str]
    _tampered: Callable[[str], TamperingError]

    # -- API keys

    def add_api_key(self, key_id: str, secret_hash: str, info: ApiKeyInfo) -> None:
        """Store a new key's salted hash and terms. Raises InvalidArgumentError if the name was ever used."""
        if self.conn.execute("SELECT 1 FROM api_keys WHERE name = ?", (info.name,)).fetchone():
            raise InvalidArgumentError(
                f"An API key named '{info.name}' exists (or existed: names stay in the audit trail): choose another name."
            )
        row = (key_id, info.name, secret_hash, json.dumps(list(info.roles)), json.dumps(list(info.purposes)),
               _ts(info.expires) if info.expires else None, info.rate_limit, _ts(info.created_at), None)
        self.keys.new_api_key_mark(key_id)  # before the row commits, as a subject's data key
        self.conn.execute(f"INSERT INTO api_keys ({_KEY_FIELDS}, mac) VALUES (?,?,?,?,?,?,?,?,?,?)",
                          (*row, self._mac(["api_key", *row])))

    def _checked_key(self, row: Sequence[Any]) -> ApiKeyInfo:
        """A key row as written by consentmatch: its MAC holds, and a row that says the key is live
        has the key's mark (revocation shreds it: an older row rolled back has none)."""
        if not self._holds(["api_key", *row[:9]], row[9]) or (row[8] is None and not self.keys.api_key_live(str(row[0]))):
            raise self._tampered(f"the API key '{row[1]}'")
        return _api_key(row)

    def mark_api_keys(self) -> None:
        """Give the live keys of a gallery from before the marks theirs, once per key store (at the open)."""
        if self.keys.api_keys_marked():
            return
        live = [row for row in self.conn.execute(f"SELECT {_KEY_FIELDS}, mac FROM api_keys WHERE revoked_at IS NULL")
                if self._holds(["api_key", *row[:9]], row[9])]
        if live:
            self.keys.mark_api_keys([str(row[0]) for row in live])
        self.keys.set_api_keys_marked()

    def api_keys(self) -> list[ApiKeyInfo]:
        """Every key, revoked ones included, by name."""
        rows = self.conn.execute(f"SELECT {_KEY_FIELDS}, mac FROM api_keys ORDER BY name").fetchall()
        return [self._checked_key(row) for row in rows]

    def api_key(self, key_id: str) -> tuple[ApiKeyInfo, str] | None:
        """A key by its public id, with its salted hash to check the secret against; None if unknown."""
        row = self.conn.execute(f"SELECT {_KEY_FIELDS}, mac FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else (self._checked_key(row), str(row[2]))

    def revoke_api_key(self, name: str, now: datetime) -> bool:
        """Revoke a key by name; False if no key has it or it was revoked already."""
        row = self.conn.execute(f"SELECT {_KEY_FIELDS}, mac FROM api_keys WHERE name = ? AND revoked_at IS NULL",
                                (name,)).fetchone()
        if row is None:
            return False
        self._checked_key(row)
        revoked = (*row[:8], _ts(now))
        self.conn.execute("UPDATE api_keys SET revoked_at = ?, mac = ? WHERE key_id = ?",
                          (_ts(now), self._mac(["api_key", *revoked]), row[0]))
        # Shredded now, not after the commit: a commit that then fails leaves a live row without its
        # mark, refused as tampered (never a revoked key that still opens).
        self.keys.shred([API_KEY_PREFIX + str(row[0])])
        return True

    # -- search requests

    def _request_row(self, request: SearchRequest, probe_key: str | None) -> tuple[Any, ...]:
        return (request.request_id, request.kind, request.status, request.requester, request.purpose, request.subject,
                request.case_ref, request.reason, request.tolerance, request.top_k, _ts(request.created_at),
                _ts(request.expires_at), request.decided_by, _ts(request.decided_at) if request.decided_at else None,
                request.decision_reason, json.dumps(request.result) if request.result is not None else None,
                request.error, probe_key)

    def add_request(self, request: SearchRequest, probe: bytes) -> None:
        """Hold a request and its probe, sealed under a data key of its own."""
        probe_key = self.keys.new_request_key()
        dek = self.keys.data_key(probe_key)
        assert dek is not None
        row = self._request_row(request, probe_key)
        sealed = seal(dek, probe, f"probe#{self.keys.gallery_id}#{request.request_id}".encode())
        self.conn.execute(f"INSERT INTO search_requests ({_REQUEST_FIELDS}, probe, mac) VALUES "
                          f"({', '.join('?' * len(row))}, ?, ?)", (*row, sealed, self._mac(["request", *row])))

    def _checked_request(self, row: Sequence[Any]) -> SearchRequest:
        if not self._holds(["request", *row[:18]], row[18]):
            raise self._tampered(f"the search request '{row[0]}'")
        return _request(row)

    def search_requests(self, *, request_id: str | None = None, status: str | None = None) -> list[SearchRequest]:
        """Requests, oldest first: one by id, those of one status, or all."""
        where, args = [], []
        if request_id is not None:
            where.append("request_id = ?")
            args.append(request_id)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.conn.execute(f"SELECT {_REQUEST_FIELDS}, mac FROM search_requests {clause} "
                                 "ORDER BY created_at, request_id", args).fetchall()
        return [self._checked_request(row) for row in rows]

    def update_request(self, request: SearchRequest) -> None:
        """Record a decision (status, decider, reason, result) on a request that exists."""
        (probe_key,) = self.conn.execute("SELECT probe_key FROM search_requests WHERE request_id = ?",
                                         (request.request_id,)).fetchone()
        row = self._request_row(request, probe_key)
        self.conn.execute(
            "UPDATE search_requests SET status = ?, decided_by = ?, decided_at = ?, decision_reason = ?, result = ?, "
            "error = ?, mac = ? WHERE request_id = ?",
            (row[2], row[12], row[13], row[14], row[15], row[16], self._mac(["request", *row]), request.request_id),
        )

    def request_probe(self, request_id: str) -> bytes | None:
        """The held probe, unsealed; None once destroyed."""
        row = self.conn.execute("SELECT probe_key, probe FROM search_requests WHERE request_id = ?",
                                (request_id,)).fetchone()
        if row is None or row[1] is None:
            return None
        dek = self.keys.data_key(str(row[0]))
        probe = None if dek is None else unseal(dek, bytes(row[1]), f"probe#{self.keys.gallery_id}#{request_id}".encode())
        if dek is not None and probe is None:
            raise EncryptionKeyError(f"The probe held by request '{request_id}' does not open: restore the gallery "
                                     "from a backup.")
        return probe

    def destroy_probe(self, request_id: str) -> str | None:
        """Drop the held probe; returns its data key id for the caller to shred after the commit."""
        row = self.conn.execute("SELECT probe_key FROM search_requests WHERE request_id = ?", (request_id,)).fetchone()
        self.conn.execute("UPDATE search_requests SET probe = NULL WHERE request_id = ?", (request_id,))
        return None if row is None or row[0] is None else str(row[0])

    def requests_naming(self, subject: str) -> tuple[list[SearchRequest], list[str]]:
        """The requests that name a subject (a verify of it; a result that names it), oldest first,
        for its erasure: those whose row holds its MAC, and the ids of those whose row fails it
        (not refused, since an erasure never is: it strips them with `strip_request`)."""
        intact, edited = [], []
        # Only rows whose subject is the name or whose result's text holds it as a JSON string (as
        # `_request_row` writes it) are read and checked: an erasure does not check every request's MAC.
        quoted = json.dumps(subject).replace("!", "!!").replace("%", "!%").replace("_", "!_")
        for row in self.conn.execute(f"SELECT {_REQUEST_FIELDS}, mac FROM search_requests "
                                     "WHERE subject = ? OR result LIKE ? ESCAPE '!' ORDER BY created_at, request_id",
                                     (subject, f"%{quoted}%")).fetchall():
            try:
                request: SearchRequest | None = _request(row)
            except (ValueError, TypeError):  # not as consentmatch writes it: read it for the name alone
                request = None
            if request is not None and self._holds(["request", *row[:18]], row[18]):
                if request.subject == subject or subject in request.result_names():
                    intact.append(request)
            elif row[5] == subject or (row[15] is not None and subject in str(row[15])):
                edited.append(str(row[0]))
        return intact, edited

    def strip_request(self, request_id: str) -> str | None:
        """Drop a request's probe and result as its row stands, its MAC not renewed (a row edited
        outside consentmatch stays refused); returns the probe's data key id to shred, if the row
        names a probe's key (an edited row naming a subject's key must not shred it)."""
        key = self.destroy_probe(request_id)
        self.conn.execute("UPDATE search_requests SET result = NULL WHERE request_id = ?", (request_id,))
        return key if key is not None and key.startswith(REQUEST_KEY_PREFIX) else None

    # -- idempotent calls (status 0: a call that holds its key and is still at work)

    def answer_fingerprint(self, digest: str) -> str:
        """A request's digest keyed by the gallery's MAC key, as stored: a copy of the gallery
        gives no way to test a guess of what a request said (an e-mail, a name)."""
        return self._mac(["idempotency", digest])

    def recalled(self, owner: str, key: str) -> tuple[str, int, str] | None:
        """The remembered answer of a call: (keyed fingerprint of its request, status, body)."""
        row = self.conn.execute("SELECT fingerprint, status, body FROM idempotency WHERE owner = ? AND key = ?",
                                (owner, key)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), str(row[2]))

    def remember(self, owner: str, key: str, fingerprint: str, status: int, body: str, now: datetime) -> None:
        """Keep a call's answer for its retries: it fills the call's hold on the key (status 0),
        else is stored anew; the first answer stays."""
        self.conn.execute("UPDATE idempotency SET status = ?, body = ? WHERE owner = ? AND key = ? AND fingerprint = ? "
                          "AND status = 0", (status, body, owner, key, fingerprint))
        self.conn.execute("INSERT INTO idempotency (owner, key, fingerprint, status, body, created_at) "
                          "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING", (owner, key, fingerprint, status, body, _ts(now)))

    def release_answer(self, owner: str, key: str) -> None:
        """Free a key whose call failed (its hold, status 0): a corrected retry may use it."""
        self.conn.execute("DELETE FROM idempotency WHERE owner = ? AND key = ? AND status = 0", (owner, key))

    def expire_answers(self, before: datetime) -> None:
        """Erase the answers (and holds) kept since before `before`: the policy's TTL."""
        self.conn.execute("DELETE FROM idempotency WHERE created_at < ?", (_ts(before),))

    def erase_answers(self, subject: str) -> None:
        """Erase the kept answers that concern a subject (their JSON names it): erasure leaves none."""
        for owner, key, body in self.conn.execute("SELECT owner, key, body FROM idempotency").fetchall():
            try:
                named = json.loads(body).get("subject") if body else None
            except (ValueError, AttributeError):
                named = None
            if named == subject:
                self.conn.execute("DELETE FROM idempotency WHERE owner = ? AND key = ?", (owner, key))
