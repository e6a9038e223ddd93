"""Who may call the service: API keys with roles and purposes.

A key is ``cm_<id>_<secret>``: the id finds its row, the secret is checked against a salted
scrypt hash (only the hash is stored, so a copy of the gallery gives no key away). Keys are
managed from the CLI, which holds the gallery key, or over HTTP by a key with the `admin` role.
The audit actor of a call is its key's name, never anything the caller sends.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from ..consent import check_purpose
from ..errors import AuthenticationError, InvalidArgumentError
from ..results import ApiKeyInfo, NewApiKey
from ..text import visible
from .context import Context, check_declared, check_name, check_new_name

__all__ = ["ROLES", "answer_once", "api_keys", "authenticate", "create_api_key", "key_id", "recall", "remember",
           "revoke_api_key"]

#: What each role may do (README, "Service"): one key may hold several.
ROLES = {
    "admin": "API keys, policy, purposes",
    "enroller": "consents, enrollment, import",
    "operator": "match and verify",
    "approver": "approve or deny search requests",
    "auditor": "audit trail, subject export, retention",
}
_KEY = re.compile(r"cm_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # 16 MiB, ~50 ms: checked once per key per process (see `authenticate`)
#: What an unknown key id is checked against: the same scrypt as a real one, so time tells no id apart.
_DUMMY = f"scrypt${'00' * 16}${'00' * 32}"


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)


def create_api_key(
    ctx: Context, name: str, roles: Sequence[str], purposes: Sequence[str], expires: datetime | None,
    rate_limit: int | None, actor: str | None,
) -> NewApiKey:
    """A new key, shown once; its salted hash and terms stored, the creation audited. Its purposes
    must be declared ones (a typo is refused with the closest declared purpose)."""
    name = check_new_name(name, "API key name")
    if ":" in name:  # the audit's actor is the key's name: `kind:name` is what consentmatch names itself
        raise InvalidArgumentError(f"'{visible(name)}' is not a valid API key name: ':' marks the actors consentmatch "
                                   "names itself (local:<OS user>, service:anonymous); use another character, e.g. '-'.")
    wanted = sorted(set(roles))
    unknown = [r for r in wanted if r not in ROLES]
    if not wanted or unknown:
        raise InvalidArgumentError(f"{'Unknown role ' + repr(unknown[0]) if unknown else 'No role'}: "
                                   f"give one or more of {', '.join(ROLES)} (--role R).")
    labels = sorted({check_purpose(p) for p in purposes})
    now = ctx.now()
    if expires is not None and expires <= now:
        raise InvalidArgumentError(f"The expiry {expires.date().isoformat()} has passed: give a date in the future.")
    if rate_limit is not None and not 1 <= rate_limit <= 1_000_000:
        raise InvalidArgumentError(f"Rate limit {rate_limit} is out of range: use 1 to 1000000 requests a minute.")
    key_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_bytes(16)
    stored = f"scrypt${salt.hex()}${_hash(secret, salt).hex()}"
    info = ApiKeyInfo(name=name, roles=tuple(wanted), purposes=tuple(labels), expires=expires, created_at=now,
                      rate_limit=rate_limit)
    with ctx.lock, ctx.store.write(create=True, bump=False) as tx:
        for label in labels:  # a typo would make a key that can search for nothing, silently
            check_declared(tx, label, now, fix="`consentmatch purpose list` shows them; declare a new one with "
                                              "`consentmatch purpose add`.")
        tx.add_api_key(key_id, stored, info)
        tx.append_audit(at=now, actor=ctx.who(actor), action="apikey-create",
                        details={"name": name, "roles": list(info.roles), "purposes": list(labels),
                                 "expires": expires.isoformat() if expires else None})
    return NewApiKey(name=name, key=f"cm_{key_id}_{secret}", roles=info.roles, purposes=info.purposes,
                     expires=expires)


def api_keys(ctx: Context) -> list[ApiKeyInfo]:
    """Every key by name, revoked ones included (never a key or its hash)."""
    if not ctx.store.exists():
        return []
    with ctx.lock, ctx.store.read() as tx:
        return tx.api_keys()


def revoke_api_key(ctx: Context, name: str, actor: str | None) -> bool:
    """Revoke a key at once (audited); False if no active key has the name."""
    name = check_name(name, "API key name")
    if not ctx.store.exists():
        return False
    with ctx.lock, ctx.store.write(bump=False) as tx:
        revoked = tx.revoke_api_key(name, ctx.now())
        if revoked:
            tx.append_audit(at=ctx.now(), actor=ctx.who(actor), action="apikey-revoke", details={"name": name})
    return revoked


def key_id(presented: str | None) -> str | None:
    """The public id of a presented key (what the service counts failed attempts by), if well formed."""
    found = _KEY.fullmatch(presented or "")
    return None if found is None else found.group(1)


def authenticate(ctx: Context, presented: str | None, before_check: Callable[[], None] | None = None) -> ApiKeyInfo:
    """The active key a request presents, or AuthenticationError (one message for every failure,
    so a caller learns nothing about which keys exist). The scrypt check runs once per key and
    process; a wrong secret and an unknown id cost one scrypt each time, alike, so neither the
    answer nor its time tells which ids exist. Revocation and expiry are read on every call.
    `before_check` runs just before a scrypt (the service's limit on failed attempts: a key
    already checked in this process is never held up by it)."""
    refused = AuthenticationError("No valid API key: send 'Authorization: Bearer <key>' with a key from "
                                  "`consentmatch apikey create` that is neither revoked nor expired.")
    found = _KEY.fullmatch(presented or "")
    if found is None or not ctx.store.exists():
        raise refused
    public_id, secret = found.groups()
    with ctx.lock, ctx.store.read() as tx:
        row = tx.api_key(public_id)
    info, stored = row if row is not None else (None, _DUMMY)
    digest = hashlib.sha256(f"{stored}#{presented}".encode()).hexdigest()
    if info is None or digest not in ctx.verified_keys:
        if before_check is not None:
            before_check()
        _, salt, expected = stored.split("$")
        if not hmac.compare_digest(_hash(secret, bytes.fromhex(salt)).hex(), expected) or info is None:
            raise refused
        ctx.verified_keys.add(digest)
    if not info.active(ctx.now()):
        raise refused
    return info


def answer_once(ctx: Context, owner: str, key: str, digest: str, run: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """A call made with an Idempotency-Key, answered once: the key is held in the store (one
    write transaction, so of concurrent calls on any machine one wins) before `run` does the
    work; its answer (status, body) is kept for the policy's `idempotency_ttl_hours` and given
    to every retry of the same request. The request's digest is stored keyed (MAC key).

    Raises:
        InvalidArgumentError: the key was used for a different request, or its call is still
            running. Whatever `run` raises (the key is freed again: nothing was kept).
    """
    now = ctx.now()
    with ctx.lock, ctx.store.write(bump=False) as tx:
        tx.expire_answers(now - timedelta(hours=int(tx.policy()["idempotency_ttl_hours"])))
        fingerprint = tx.answer_fingerprint(digest)
        kept = tx.recalled(owner, key)
        if kept is None:
            tx.remember(owner, key, fingerprint, 0, "", now)  # the hold: status 0 until answered
    if kept is not None:
        if not hmac.compare_digest(kept[0], fingerprint):
            raise InvalidArgumentError("This Idempotency-Key was used for a different request: use a new key for each "
                                       "new request.")
        if kept[1] == 0:
            raise InvalidArgumentError("The request with this Idempotency-Key is still running: retry it in a moment "
                                       "for its answer.")
        return kept[1], kept[2]
    try:
        status, body = run()
    except BaseException:
        with ctx.lock, ctx.store.write(bump=False) as tx:
            tx.release_answer(owner, key)
        raise
    with ctx.lock, ctx.store.write(bump=False) as tx:
        tx.remember(owner, key, fingerprint, status, body, now)
    return status, body


def recall(ctx: Context, owner: str, key: str) -> tuple[str, int, str] | None:
    """The answer kept for an Idempotency-Key: (keyed request fingerprint, status, body); status
    0 while its call runs. See `answer_once`, which the service uses."""
    if not ctx.store.exists():
        return None
    with ctx.lock, ctx.store.read() as tx:
        return tx.recalled(owner, key)


def remember(ctx: Context, owner: str, key: str, digest: str, status: int, body: str) -> None:
    """Keep a call's answer for its retries (the first one kept stays; the digest is stored keyed)."""
    with ctx.lock, ctx.store.write(bump=False) as tx:
        tx.remember(owner, key, tx.answer_fingerprint(digest), status, body, ctx.now())
