"""Write the committed old gallery (tests/test_formats.py opens it with every later version).

Made once, by the consentmatch of commit 5833d11 (main before issue 27's storage round):

    git archive 5833d11 consentmatch | tar -x -C /tmp/old
    rm -rf tests/data/old_gallery/{gallery.db,keys}
    CONSENTMATCH_QUALITY=off PYTHONPATH=/tmp/old:. uv run python tests/data/old_gallery/make.py tests/data/old_gallery

Never make it again with newer code: its point is to be what an old version wrote. The key is
a test key, committed on purpose (KEY below); the fake encoder is tests/conftest.py's.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

import consentmatch
from consentmatch import Consent, Gallery

from tests.conftest import FakeEncoder, fake_photo

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def main(folder: Path) -> None:
    print(f"consentmatch from {consentmatch.__file__}")  # the old code's, not this checkout's
    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    path = folder / "gallery.db"
    with Gallery(path, encoder=FakeEncoder(), key=KEY, key_dir=folder / "keys", actor="maker") as gallery:
        gallery.declare_purpose("door")
        gallery.declare_purpose("lobby")
        gallery.enroll("alice", [fake_photo(photos, "alice.png", (10, 0))],
                       Consent("R-alice", ["door", "lobby"]), email="alice@example.org")
        gallery.enroll("bob", [fake_photo(photos, "bob.png", (20, 0)), fake_photo(photos, "bob2.png", (20, 1))],
                       Consent("R-bob", ["door"], expires_at=datetime(2099, 1, 1, tzinfo=timezone.utc)))
        gallery.enroll("carol", [fake_photo(photos, "carol.png", (30, 0))], Consent("R-carol", ["door"]))
        gallery.forget("carol")
        gallery.enroll("dave", [fake_photo(photos, "dave.png", (40, 0))], Consent("R-dave", ["lobby"]))
        gallery.revoke_consent("R-dave")
        gallery.add_optout(email="mallory@example.org")
        gallery.set_policy("max_top_k", 5)
        live = gallery.create_api_key("desk-1", roles=["operator"], purposes=["door"])
        gone = gallery.create_api_key("old-1", roles=["operator"], purposes=["door"])
        gallery.revoke_api_key("old-1")
        check = gallery.verify_audit()
        assert check.intact, check
        subjects = sorted(s.subject for s in gallery.subjects())
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    (gallery_id,) = conn.execute("SELECT value FROM meta WHERE key = 'gallery_id'").fetchone()
    conn.close()
    for leftover in ("gallery.db-wal", "gallery.db-shm"):
        (folder / leftover).unlink(missing_ok=True)
    (folder / "expected.json").write_text(json.dumps({
        "schema": version, "gallery_id": gallery_id, "key": KEY, "subjects": subjects,
        "events": check.events, "head": check.head, "live_api_key": live.key, "revoked_api_key": gone.key,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
