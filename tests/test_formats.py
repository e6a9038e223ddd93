"""The on-disk formats, pinned: known-answer vectors for the audit digest, the row MACs and the
templates' sealed binding, and a gallery written by an older consentmatch (tests/data/old_gallery,
made by its make.py) that every later version must open, verify, match against and erase from.

A vector that changes means galleries already written no longer verify: never update one to make a
test pass; add a migration instead."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from consentmatch import AuthenticationError, Gallery, audit
from consentmatch.crypto import unseal
from consentmatch.services import access
from consentmatch.storage.sqlite_integrity import Integrity

from .conftest import DATA, FakeEncoder

OLD = DATA / "old_gallery"
GALLERY_ID = "0123456789abcdef0123456789abcdef"
MAC_KEY = bytes(range(32))
AT = "2026-03-01T00:00:00.000000+00:00"


def _integrity() -> Any:
    """The MAC and binding half of a transaction, over fixed keys (no store needed)."""
    return SimpleNamespace(keys=SimpleNamespace(gallery_id=GALLERY_ID, mac_key=lambda: MAC_KEY))


def test_the_audit_digest_is_sha256_of_its_canonical_json() -> None:
    details = audit.details_text({"templates": 1, "é": "ü"})
    assert details == '{"templates":1,"é":"ü"}'
    digest = audit.digest(1, AT, "desk", "enroll", "alice", "door", details, "0" * 64)
    canonical = json.dumps([1, AT, "desk", "enroll", "alice", "door", details, "0" * 64], separators=(",", ":"))
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert digest == "6db74f704677cd3c89aa9fad275ca70c93f687f1a21ae6f5745925707dc996a4"


@pytest.mark.parametrize(("content", "expected"), [
    (["subject", 1, "alice", AT, "k1", None, None, None],
     "686cffa6df788931e8281bbbc2ee5907bc4865a841aacf74337fca2392aad5fd"),
    (["api_key", "abc", "desk-1", "scrypt$00$11", '["operator"]', '["door"]', None, None, AT, None],
     "86fd07403ea6645d86c343de3eb9ca52c486ba38be3c9158b2d994da08bc44d7"),
])
def test_a_row_mac_is_hmac_sha256_of_the_gallery_id_and_its_columns(content: list[Any], expected: str) -> None:
    mac = Integrity._mac(_integrity(), content)
    canonical = json.dumps([GALLERY_ID, *content], ensure_ascii=False, separators=(",", ":"))
    assert mac == hmac.new(MAC_KEY, canonical.encode(), hashlib.sha256).hexdigest() == expected


def test_a_template_is_bound_to_gallery_subject_name_key_and_row() -> None:
    aad = Integrity._binding(_integrity(), 1, "alice", "k1") + b"7"
    assert aad == b'["template","0123456789abcdef0123456789abcdef",1,"alice","k1"]#7'
    # AES-256-GCM: a 12-byte nonce, then the ciphertext and its tag; made by `crypto.seal` once.
    sealed = bytes.fromhex("ffc4fcbc0002cbd9a0300781fba1d545e6e9a0dd148cda8ca88f5346a31856386b85013efe6ccc4b1853d5c4")
    data_key = bytes(range(32, 64))
    assert unseal(data_key, sealed, aad) == b"\x00\x00\x80?" * 4  # float32 1.0, little-endian
    assert unseal(data_key, sealed, aad.replace(b"alice", b"bobby")) is None


def _old_copy(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A private copy of the committed old gallery, its key folder private as the keys insist."""
    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    os.chmod(folder / "keys", 0o700)
    for key_file in (folder / "keys").iterdir():
        os.chmod(key_file, 0o600)
    return folder, json.loads((folder / "expected.json").read_text())


def test_the_old_gallery_opens_verifies_matches_and_erases(tmp_path: Path) -> None:
    folder, expected = _old_copy(tmp_path)
    photos = folder / "photos"
    with Gallery(folder / "gallery.db", encoder=FakeEncoder(), key=expected["key"], key_dir=folder / "keys") as gallery:
        check = gallery.verify_audit()
        assert check.intact, check.problem
        assert (check.events, check.head) == (expected["events"], expected["head"])
        assert sorted(s.subject for s in gallery.subjects()) == expected["subjects"]
        assert gallery.match(photos / "alice.png", purpose="door").faces[0].subject == "alice"
        assert gallery.match(photos / "bob2.png", purpose="door").faces[0].subject == "bob"
        assert gallery.match(photos / "carol.png", purpose="door").faces[0].subject is None  # forgotten
        assert access.authenticate(gallery.context, expected["live_api_key"]).name == "desk-1"
        with pytest.raises(AuthenticationError):
            access.authenticate(gallery.context, expected["revoked_api_key"])
        gallery.forget("bob")
        assert gallery.match(photos / "bob.png", purpose="door").faces[0].subject is None
        assert gallery.verify_audit().intact
    with Gallery(folder / "gallery.db", encoder=FakeEncoder(), key=expected["key"], key_dir=folder / "keys") as gallery:
        assert gallery.revoke_api_key("desk-1")
        with pytest.raises(AuthenticationError):
            access.authenticate(gallery.context, expected["live_api_key"])
        assert gallery.verify_audit().intact
