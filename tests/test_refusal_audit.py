"""Refused calls leave an audit event (issue 24, item 12): the service's 403s (a key outside its
role or purposes) and a search that needs approval without a case reference and a reason (422);
an approved search's event names its request and case reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from consentmatch import ApprovalRequiredError, Consent, Gallery, PermissionDeniedError
from consentmatch.service import create_app

from .conftest import FakeEncoder, fake_photo


@pytest.fixture
def office(tmp_path: Path) -> Iterator[tuple[Gallery, TestClient, dict[str, dict[str, str]], bytes]]:
    gallery = Gallery(tmp_path / "office.db", encoder=FakeEncoder(), actor="setup")
    gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("F-1", ["door", "police"]))
    gallery.set_policy("approval_purposes", "police")
    keys = {
        "desk": gallery.create_api_key("desk-3", roles=["operator"], purposes=["door"]).key,
        "officer": gallery.create_api_key("officer-12", roles=["operator"]).key,
        "auditor": gallery.create_api_key("privacy-officer", roles=["auditor"]).key,
        "lt": gallery.create_api_key("lt.jones", roles=["approver"]).key,
    }
    headers = {who: {"Authorization": f"Bearer {key}"} for who, key in keys.items()}
    probe = fake_photo(tmp_path, "probe.png", (10, 1)).read_bytes()
    with TestClient(create_app(gallery)) as client:
        yield gallery, client, headers, probe
    gallery.close()


def _refused(gallery: Gallery, **where: Any) -> list[dict[str, Any]]:
    return [e.to_dict() for e in gallery.audit(**where) if e.details.get("outcome") == "refused"]


def test_a_403_outside_the_keys_purposes_or_role_is_audited(office: Any) -> None:
    gallery, client, headers, probe = office
    answer = client.post("/v1/match", headers=headers["desk"], files={"photo": ("p.png", probe)},
                         data={"purpose": "police"})
    assert answer.status_code == 403, answer.text
    (event,) = _refused(gallery, actor="desk-3")
    assert (event["action"], event["purpose"]) == ("match", "police")
    assert event["details"]["error"] == "PermissionDeniedError" and event["details"]["call"] == "POST /v1/match"
    assert "may not search for purpose 'police'" in event["details"]["reason"]

    assert client.delete("/v1/subjects/alice", headers=headers["auditor"]).status_code == 403
    (event,) = _refused(gallery, actor="privacy-officer")
    assert (event["action"], event["subject"]) == ("forget", "alice")
    assert event["details"]["call"] == "DELETE /v1/subjects/{subject}" and "lacks the role" in event["details"]["reason"]
    assert [s.subject for s in gallery.subjects()] == ["alice"]


def test_a_403_on_every_keyed_route_is_audited(office: Any) -> None:
    """Red team: only the five routes named like an audit action (match, verify, enroll, forget,
    export) were recorded; an approver's attempt to create an admin key, or an operator reading
    the audit trail, left no event (the record was dropped silently)."""
    gallery, client, headers, _ = office
    calls = [
        ("POST", "/v1/apikeys", {"json": {"name": "mine", "roles": ["admin"]}}, "apikey-create"),
        ("PUT", "/v1/policy/tolerance", {"json": {"value": 1.5}}, "policy-set"),
        ("GET", "/v1/audit", {}, "call"),
        ("GET", "/v1/apikeys", {}, "call"),
        ("POST", "/v1/consents", {"json": {"subject": "bob", "reference": "F-9", "purposes": ["door"]}},
         "consent-grant"),
    ]
    for method, path, extra, action in calls:
        answer = client.request(method, path, headers=headers["lt"], **extra)
        assert answer.status_code == 403, (path, answer.text)
        event = _refused(gallery, actor="lt.jones")[-1]
        assert event["action"] == action, (path, event)
        assert event["details"]["call"].startswith(f"{method} /v1/") and event["details"]["error"] == "PermissionDeniedError"
    assert len(_refused(gallery, actor="lt.jones")) == len(calls)
    assert gallery.verify_audit().intact


def test_a_search_that_needs_approval_without_case_and_reason_is_audited(office: Any) -> None:
    gallery, client, headers, probe = office
    answer = client.post("/v1/verify", headers=headers["officer"], files={"photo": ("p.png", probe)},
                         data={"purpose": "police", "subject": "alice", "case_ref": "C-1"})  # no reason
    assert answer.status_code == 422 and answer.json()["error"] == "ApprovalRequiredError", answer.text
    (event,) = _refused(gallery, actor="officer-12")
    assert (event["action"], event["subject"], event["purpose"]) == ("verify", "alice", "police")
    assert event["details"]["error"] == "ApprovalRequiredError"
    with pytest.raises(ApprovalRequiredError):  # the library (and the CLI) alike
        gallery.match(probe, purpose="police", actor="cli-user")
    assert [e["action"] for e in _refused(gallery, actor="cli-user")] == ["match"]


def test_a_held_request_is_no_refusal_and_its_approved_search_names_it(office: Any) -> None:
    gallery, client, headers, probe = office
    held = client.post("/v1/match", headers=headers["officer"], files={"photo": ("p.png", probe)},
                       data={"purpose": "police", "case_ref": "C-24-118", "reason": "theft report"})
    assert held.status_code == 202, held.text
    request_id = held.json()["request_id"]
    assert _refused(gallery, actor="officer-12") == []
    decided = client.post(f"/v1/requests/{request_id}/approve", headers=headers["lt"], json={"reason": "reviewed"})
    assert decided.status_code == 200, decided.text
    (search,) = [e for e in gallery.audit(action="match", actor="officer-12")]
    assert search.details["request"] == request_id and search.details["case_ref"] == "C-24-118"
    assert search.details["subjects"] == ["alice"]


def test_deciding_ones_own_request_is_refused_on_the_record(office: Any) -> None:
    gallery, _, _, probe = office
    held = gallery.request_match(probe, purpose="police", case_ref="C-7", reason="r", actor="sgt.lee")
    with pytest.raises(PermissionDeniedError):
        gallery.approve_request(held.request_id, reason="mine", actor="sgt.lee")
    (event,) = _refused(gallery, actor="sgt.lee")
    assert event["action"] == "request-approve" and event["details"]["request"] == held.request_id
    assert gallery.search_request(held.request_id).status == "pending"
