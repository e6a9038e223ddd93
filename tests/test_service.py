"""The HTTP service in process (FastAPI's test client), on the real models and the example photos:
every endpoint, role and error; the department approval flow; idempotent retries; problems.
Each test runs on both stores: the SQLite gallery, and a PostgreSQL copy of it (tests/pg.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from consentmatch import Gallery
from consentmatch.service import create_app
from consentmatch.services import approvals, erasure
from consentmatch.services.context import utcnow
from consentmatch.services.transfer import copy_gallery
from consentmatch.settings import Settings

from .conftest import EXAMPLES, STORES

PROBES = EXAMPLES / "probes"
ROLES = ("admin", "enroller", "operator", "approver", "auditor")


@dataclass
class Service:
    client: TestClient
    gallery: Gallery
    keys: dict[str, str]
    path: str  # where the gallery is: an SQLite file or a postgresql:// URL

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def get(self, who: str, url: str, **kw: Any) -> Any:
        return self.client.get(url, headers=self.as_(who), **kw)

    def post(self, who: str, url: str, **kw: Any) -> Any:
        headers = {**self.as_(who), **kw.pop("headers", {})}
        return self.client.post(url, headers=headers, **kw)

    def match(self, who: str, photo: str, purpose: str = "visitor-check-in", **form: Any) -> Any:
        with open(PROBES / photo, "rb") as f:
            return self.post(who, "/v1/match", files={"photo": (photo, f.read())}, data={"purpose": purpose, **form})


@pytest.fixture(params=STORES)
def service(request: pytest.FixtureRequest, real_gallery_path: Path) -> Iterator[Service]:
    """The app over the real gallery, on each store in turn: PostgreSQL gets a copy of the same
    gallery (`consentmatch copy`), so both runs see the same people without enrolling them again."""
    location = str(real_gallery_path)
    if request.param == "postgres":
        location = request.getfixturevalue("pg_url")
        copy_gallery(real_gallery_path, location, Settings.from_env())
    gallery = Gallery(location, actor="setup")
    keys = {role: gallery.create_api_key(f"{role}-1", roles=[role]).key for role in ROLES}
    keys["operator-2"] = gallery.create_api_key("operator-2", roles=["operator", "approver"]).key
    keys["desk"] = gallery.create_api_key("desk", roles=["operator"], purposes=["visitor-check-in"]).key
    with TestClient(create_app(gallery)) as client:
        yield Service(client, gallery, keys, location)
    gallery.close()


def _held_probes(location: str) -> int:
    """How many search requests still hold a probe, read from the store itself (either engine)."""
    query = "SELECT COUNT(*) FROM search_requests WHERE probe IS NOT NULL"
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as pg:
            row = pg.execute(query).fetchone()
    else:
        conn = sqlite3.connect(location)
        try:
            row = conn.execute(query).fetchone()
        finally:
            conn.close()
    assert row is not None
    return int(row[0])


def _problem(response: Any, status: int, error: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    assert "\n" not in body["detail"] and "Traceback" not in body["detail"]
    if error:
        assert body["error"] == error, body
    return body


def test_health_needs_no_key_and_everything_else_does(service: Service) -> None:
    assert service.client.get("/v1/health").json() == {"status": "ok"}
    _problem(service.client.get("/v1/subjects"), 401, "AuthenticationError")
    _problem(service.client.get("/v1/subjects", headers={"Authorization": "Bearer cm_0123456789abcdef_" + "x" * 43}),
             401)
    wrong_secret = service.keys["auditor"][:-4] + "AAAA"
    _problem(service.client.get("/v1/subjects", headers={"Authorization": f"Bearer {wrong_secret}"}), 401)
    version = service.get("auditor", "/v1/version").json()
    assert version["key"]["name"] == "auditor-1" and "key" not in version["key"]


def test_match_names_the_right_person_and_audits_the_key_name(service: Service) -> None:
    response = service.match("operator", "obama1.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [f["subject"] for f in body["faces"]] == ["obama"]
    assert response.headers["cache-control"] == "no-store"
    events = service.gallery.audit(action="match")
    assert events[-1].actor == "operator-1"  # the key's name, whatever the caller sends


def test_verify_and_its_refusals(service: Service) -> None:
    with open(PROBES / "obama1.jpg", "rb") as f:
        photo = f.read()
    ok = service.post("operator", "/v1/verify", files={"photo": ("p.jpg", photo)},
                      data={"subject": "obama", "purpose": "staff-access"})
    assert ok.status_code == 200 and ok.json()["match"] is True
    no = service.post("operator", "/v1/verify", files={"photo": ("p.jpg", photo)},
                      data={"subject": "kit_harington", "purpose": "staff-access"})
    assert no.status_code == 200 and no.json()["match"] is False  # no consent for the purpose: a non-match (issue 24)
    bad = service.post("operator", "/v1/verify", files={"photo": ("p.jpg", b"not a photo")},
                       data={"subject": "obama", "purpose": "staff-access"})
    _problem(bad, 400, "ImageError")


def test_roles_and_purposes_are_enforced_by_the_server(service: Service) -> None:
    _problem(service.match("auditor", "obama1.jpg"), 403, "PermissionDeniedError")
    _problem(service.get("operator", "/v1/audit"), 403, "PermissionDeniedError")
    _problem(service.post("operator", "/v1/apikeys", json={"name": "x", "roles": ["admin"]}), 403)
    _problem(service.match("desk", "obama1.jpg", purpose="staff-access"), 403, "PermissionDeniedError")
    assert service.match("desk", "obama1.jpg").status_code == 200
    assert service.get("auditor", "/v1/audit", params={"actor": "desk", "action": "match"}).json()[-1]["actor"] == "desk"


def test_consents_enroll_and_forget_over_http(service: Service) -> None:
    consent = {"subject": "lin", "reference": "FORM-90", "purposes": ["visitor-check-in"], "expires": "2030-01-01"}
    created = service.post("enroller", "/v1/consents", json=consent)
    assert created.status_code == 201 and created.json()["reference"] == "FORM-90"
    assert service.get("auditor", "/v1/consents/FORM-90").json()["subject"] == "lin"
    _problem(service.get("auditor", "/v1/consents/NOPE"), 404, "UnknownReferenceError")
    taken = service.post("enroller", "/v1/consents", json={**consent, "subject": "someone-else"})
    _problem(taken, 409, "ConsentError")
    _problem(service.post("enroller", "/v1/consents", json={**consent, "purposes": []}), 422)
    with open(PROBES / "lin-manuel-miranda.png", "rb") as f:
        photo = f.read()
    enrolled = service.post("enroller", "/v1/subjects/lin/photos", files=[("photos", ("lin.png", photo))],
                            data={"consent_ref": "FORM-90", "quality": "off"})
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["subject"] == "lin"
    assert "lin" in [s["subject"] for s in service.get("auditor", "/v1/subjects").json()]
    export = service.get("auditor", "/v1/subjects/lin/export").json()
    assert export["subject"] == "lin" and "embedding" not in str(export)
    erased = service.client.delete("/v1/subjects/lin", headers=service.as_("enroller"))
    assert erased.status_code == 200 and erased.json()["subject"] == "lin"
    _problem(service.client.delete("/v1/subjects/lin", headers=service.as_("enroller")), 404, "SubjectNotFoundError")


def test_an_idempotent_retry_returns_the_first_answer_and_changes_nothing(service: Service) -> None:
    consent = {"subject": "rita", "reference": "FORM-91", "purposes": ["visitor-check-in"]}
    first = service.post("enroller", "/v1/consents", json=consent, headers={"Idempotency-Key": "k-1"})
    events = len(service.gallery.audit())
    again = service.post("enroller", "/v1/consents", json=consent, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == first.status_code == 201 and again.json() == first.json()
    assert len(service.gallery.audit()) == events  # nothing ran again
    other = service.post("enroller", "/v1/consents", json={**consent, "reference": "FORM-92"},
                         headers={"Idempotency-Key": "k-1"})
    _problem(other, 422, "InvalidArgumentError")


def test_department_approval_flow(service: Service) -> None:
    service.gallery.set_policy("approval_purposes", "staff-access")
    refused = service.match("operator", "obama1.jpg", purpose="staff-access")
    assert "approval" in _problem(refused, 422, "ApprovalRequiredError")["detail"]
    filed = service.match("operator", "obama1.jpg", purpose="staff-access", case_ref="CASE-7", reason="fraud report")
    assert filed.status_code == 202, filed.text
    request_id = filed.json()["request_id"]
    assert filed.json()["status"] == "pending"
    # the approver sees the queue and the probe; the requester cannot approve their own
    assert [r["request_id"] for r in service.get("approver", "/v1/requests", params={"status": "pending"}).json()] == [request_id]
    probe = service.get("approver", f"/v1/requests/{request_id}/probe")
    assert probe.status_code == 200 and probe.content == (PROBES / "obama1.jpg").read_bytes()
    assert probe.headers["cache-control"] == "no-store"
    _problem(service.get("operator", f"/v1/requests/{request_id}/probe"), 403)
    assert service.get("operator", f"/v1/requests/{request_id}").json()["result"] is None
    _problem(service.post("operator", f"/v1/requests/{request_id}/approve", json={"reason": "me"}), 403)
    mine = service.match("operator-2", "obama1.jpg", purpose="staff-access", case_ref="CASE-8", reason="own")
    _problem(service.post("operator-2", f"/v1/requests/{mine.json()['request_id']}/approve", json={"reason": "x"}),
             403, "PermissionDeniedError")
    approved = service.post("approver", f"/v1/requests/{request_id}/approve", json={"reason": "case reviewed"})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert approved.json()["result"] is None  # the approver does not see the result
    result = service.get("operator", f"/v1/requests/{request_id}").json()
    assert [f["subject"] for f in result["result"]["faces"]] == ["obama"]
    assert service.get("approver", f"/v1/requests/{request_id}").json()["result"] is None
    assert service.get("operator-2", f"/v1/requests/{request_id}").json()["result"] is None  # an approver, not the requester
    _problem(service.get("approver", f"/v1/requests/{request_id}/probe"), 404, "RequestNotFoundError")  # destroyed
    _problem(service.post("approver", f"/v1/requests/{request_id}/deny", json={"reason": "late"}), 422)
    actions = [e.action for e in service.gallery.audit()]
    assert {"request", "request-approve", "match"} <= set(actions)
    assert service.gallery.verify_audit().intact


def test_a_denied_or_expired_request_destroys_its_probe(service: Service) -> None:
    service.gallery.set_policy("approval_purposes", "staff-access")
    filed = service.match("operator", "obama1.jpg", purpose="staff-access", case_ref="C-1", reason="r").json()
    denied = service.post("approver", f"/v1/requests/{filed['request_id']}/deny", json={"reason": "no grounds"})
    assert denied.json()["status"] == "denied" and denied.json()["result"] is None
    _problem(service.get("approver", f"/v1/requests/{filed['request_id']}/probe"), 404)
    # expiry: a gallery whose clock has moved past the request's time
    filed = service.match("operator", "obama1.jpg", purpose="staff-access", case_ref="C-2", reason="r").json()
    keys_before = service.gallery.key_info()
    later = Gallery(service.path, clock=lambda: utcnow() + timedelta(hours=73))
    try:
        assert later.search_request(filed["request_id"]).status == "expired"
        with pytest.raises(Exception, match="holds no probe"):
            approvals.request_probe(later.context, filed["request_id"])
        assert "request-expire" in [e.action for e in later.audit()]
    finally:
        later.close()
    assert keys_before.data_keys == service.gallery.key_info().data_keys  # request keys are not subjects' keys
    assert _held_probes(service.path) == 0


def test_forgetting_a_subject_ends_what_its_requests_hold(service: Service) -> None:
    """The red-team's finding over HTTP: after DELETE /v1/subjects/kit_harington an approver still
    downloaded the held probe of a pending verify of him, and after forgetting obama the requester
    still read `{"subject": "obama", "match": true, "distance": ...}`. Now the pending request is
    closed as `erased`, its probe gone, and the approved one keeps no result. (A subject of its own:
    the examples' people share their data keys with every copy of the session's real gallery.)"""
    consent = {"subject": "lmm", "reference": "FORM-91", "purposes": ["staff-access"]}
    assert service.post("enroller", "/v1/consents", json=consent).status_code == 201
    with open(PROBES / "lin-manuel-miranda.png", "rb") as f:
        photo = f.read()
    enrolled = service.post("enroller", "/v1/subjects/lmm/photos", files=[("photos", ("lmm.png", photo))],
                            data={"consent_ref": "FORM-91", "quality": "off"})
    assert enrolled.status_code == 201, enrolled.text
    service.gallery.set_policy("approval_purposes", "staff-access")

    def verify() -> str:
        filed = service.post("operator", "/v1/verify", files={"photo": ("p.png", photo)},
                             data={"subject": "lmm", "purpose": "staff-access", "case_ref": "C-9", "reason": "r"})
        assert filed.status_code == 202, filed.text
        return str(filed.json()["request_id"])

    pending, approved = verify(), verify()
    assert service.post("approver", f"/v1/requests/{approved}/approve", json={"reason": "ok"}).status_code == 200
    assert service.get("operator", f"/v1/requests/{approved}").json()["result"]["match"] is True
    assert service.get("approver", f"/v1/requests/{pending}/probe").content == photo
    erased = service.client.delete("/v1/subjects/lmm", headers=service.as_("enroller"))
    assert erased.status_code == 200 and erased.json()["verified"], erased.text
    _problem(service.get("approver", f"/v1/requests/{pending}/probe"), 404, "RequestNotFoundError")
    assert service.get("operator", f"/v1/requests/{pending}").json()["status"] == "erased"
    closed = service.get("approver", "/v1/requests?status=erased")  # every status the store has can be asked for
    assert closed.status_code == 200 and pending in [r["request_id"] for r in closed.json()], closed.text
    kept = service.get("operator", f"/v1/requests/{approved}").json()
    assert (kept["status"], kept["result"], kept["error"]) == ("approved", None, erasure.ERASED_RESULT)
    assert _held_probes(service.path) == 0


def test_problems_for_bad_requests(service: Service) -> None:
    _problem(service.client.get("/v1/nowhere"), 404)
    _problem(service.post("operator", "/v1/match", data={"purpose": "visitor-check-in"}), 422)  # no photo
    _problem(service.match("operator", "obama1.jpg", purpose="visitor-checkin"), 422, "InvalidArgumentError")
    _problem(service.match("operator", "obama1.jpg", top_k="0"), 422)
    huge = service.client.post("/v1/match", headers={**service.as_("operator"), "Content-Length": str(200 * 2**20)},
                               content=b"x")
    _problem(huge, 413)


def test_rate_limit_answers_429_with_retry_after(service: Service) -> None:
    key = service.gallery.create_api_key("slow", roles=["auditor"], rate_limit=2).key
    headers = {"Authorization": f"Bearer {key}"}
    assert service.client.get("/v1/subjects", headers=headers).status_code == 200
    assert service.client.get("/v1/subjects", headers=headers).status_code == 200
    limited = service.client.get("/v1/subjects", headers=headers)
    assert int(_problem(limited, 429, "RateLimitError")["retry_after"]) >= 1
    assert limited.headers["retry-after"]


def test_admin_manages_keys_policy_and_purposes(service: Service) -> None:
    created = service.post("admin", "/v1/apikeys", json={"name": "door-2", "roles": ["operator"]})
    assert created.status_code == 201 and created.json()["key"].startswith("cm_")
    listed = service.get("admin", "/v1/apikeys").json()
    assert "door-2" in [k["name"] for k in listed] and all("key" not in k for k in listed)
    key = {"Authorization": f"Bearer {created.json()['key']}"}
    assert service.client.get("/v1/purposes", headers=key).status_code == 200
    assert service.client.delete("/v1/apikeys/door-2", headers=service.as_("admin")).json()["revoked"] is True
    _problem(service.client.get("/v1/purposes", headers=key), 401)  # revoked at once
    policy = service.client.put("/v1/policy/max_top_k", headers=service.as_("admin"), json={"value": "3"})
    assert policy.json()["max_top_k"] == 3
    _problem(service.client.put("/v1/policy/nope", headers=service.as_("admin"), json={"value": "3"}), 422)
    assert service.post("admin", "/v1/purposes", json={"name": "payroll"}).status_code == 201
    assert "payroll" in [p["purpose"] for p in service.get("auditor", "/v1/purposes").json()]
    assert service.get("auditor", "/v1/retention").status_code == 200
    assert service.get("auditor", "/v1/audit/verify").json()["intact"] is True
