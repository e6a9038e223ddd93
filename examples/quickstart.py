"""Quickstart: enroll consenting people, match a probe, verify one person, forget someone.

Run from the repository root:  uv run python examples/quickstart.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from consentmatch import Consent, ConsentError, Gallery
from consentmatch.consent import evidence_digest

HERE = Path(__file__).resolve().parent
PURPOSE = "visitor-check-in"

with tempfile.TemporaryDirectory() as tmp, Gallery(Path(tmp) / "visitors.db") as gallery:
    # Enroll: only with a recorded consent, one face per photo, all photos or none. In Illinois
    # (BIPA) the consent needs its written release: only the file's SHA-256 is kept.
    gallery.enroll(
        "obama",
        [HERE / "people/obama/obama.jpg", HERE / "people/obama/obama2.jpg"],
        Consent(
            "REL-2026-0004",
            [PURPOSE],
            jurisdiction="US-IL",
            evidence_sha256=evidence_digest(HERE / "releases/REL-2026-0004.txt"),
        ),
    )
    gallery.enroll("biden", [HERE / "people/biden/biden.jpg"], Consent("REL-2026-0002", [PURPOSE]))

    # No consent, no enrollment.
    try:
        gallery.enroll("stranger", [HERE / "probes/lin-manuel-miranda.png"], consent=None)
    except ConsentError as error:
        print("refused:", error)

    # 1:N: every face in the probe, the best subject within the tolerance, the top-k nearest.
    result = gallery.match(HERE / "probes/obama_and_biden.jpg", purpose=PURPOSE, tolerance=0.6, top_k=3)
    for face in result.faces:
        print(face.box.to_list(), face.subject, [(c.subject, round(c.distance, 3)) for c in face.candidates])

    # 1:1: is this the person?
    check = gallery.verify("obama", HERE / "probes/obama1.jpg", purpose=PURPOSE)
    print("verify obama:", check.match, round(check.distance, 3))

    # Erasure: gone from the store and the index.
    print(gallery.forget("obama"))
    print([s.subject for s in gallery.subjects()])
