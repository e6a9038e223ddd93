"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis):
whatever a caller sends, no answer is a 500, and every error is RFC 9457 problem JSON.

Runs with an admin key that holds every role (so calls reach the verbs, not only the key check)
against a gallery with people in it; the fake encoder keeps each photo call fast (the real
models are exercised by tests/test_service.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from consentmatch import Consent, Gallery
from consentmatch.service import create_app

from .conftest import PURPOSE, FakeEncoder, fake_photo

EXAMPLES_PER_OPERATION = 20


def test_no_500_and_every_error_is_a_problem(tmp_path: Path) -> None:
    gallery = Gallery(tmp_path / "fuzz.db", encoder=FakeEncoder(), actor="setup")
    gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (1, 0))], Consent("REF-1", [PURPOSE, "law-enforcement"]))
    gallery.set_policy("approval_purposes", "law-enforcement")
    key = gallery.create_api_key("fuzzer", roles=["admin", "enroller", "operator", "approver", "auditor"],
                                 rate_limit=1_000_000).key
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(gallery))
    seen: set[int] = set()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25  # every endpoint of the README's list
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def call(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {key}"})
            seen.add(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
            if response.status_code >= 400:
                assert response.headers["content-type"][0].startswith("application/problem+json"), response.text[:300]
                body = response.json()
                assert body["status"] == response.status_code and body["detail"] and body["title"] and body["type"]

        call()
    gallery.close()
    assert {200, 422} <= seen  # the fuzzer reached the verbs, not only the doors
