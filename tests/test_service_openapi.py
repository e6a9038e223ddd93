"""The service's OpenAPI document tells a client everything: the bearer scheme, every answer's
schema (checked against real answers, field for field), every problem; and lists page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from consentmatch import Consent, Gallery
from consentmatch.service import create_app

from .conftest import PURPOSE, FakeEncoder, fake_photo

NO_KEY = {("get", "/v1/health"), ("get", "/v1/health/ready"), ("post", "/v1/session")}
ROLES = ["admin", "enroller", "operator", "approver", "auditor"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], Path]]:
    gallery = Gallery(tmp_path / "g.db", encoder=FakeEncoder(), actor="setup")
    for person, name in enumerate(["alice", "bob", "carol"]):
        gallery.enroll(name, [fake_photo(tmp_path, f"{name}.png", (person, 0))],
                       Consent(f"REF-{person}", [PURPOSE, "law-enforcement"]))
    gallery.set_policy("approval_purposes", "law-enforcement")
    keys = {"all": gallery.create_api_key("all", roles=ROLES, rate_limit=100_000).key,
            "desk": gallery.create_api_key("desk", roles=["operator"], rate_limit=100_000).key}
    with TestClient(create_app(gallery)) as client:
        yield client, {who: f"Bearer {key}" for who, key in keys.items()}, tmp_path
    gallery.close()


def _spec(served: tuple[TestClient, dict[str, str], Path]) -> dict[str, Any]:
    spec: dict[str, Any] = served[0].get("/openapi.json").json()
    return spec


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_openapi_declares_the_bearer_scheme_on_every_call_that_needs_a_key(served: Any) -> None:
    spec = _spec(served)
    assert spec["components"]["securitySchemes"]["bearer"] == {
        **spec["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    for method, path, operation in _operations(spec):
        if (method, path) in NO_KEY:
            assert "security" not in operation, (method, path)
        else:
            assert operation.get("security") == [{"bearer": []}], (method, path)
            assert "401" in operation["responses"], (method, path)


def test_every_operation_declares_its_answer_and_its_problems(served: Any) -> None:
    spec = _spec(served)
    for method, path, operation in _operations(spec):
        answers = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
        assert answers, (method, path)
        for code, answer in answers.items():
            if code == "204":
                continue
            (content,) = answer["content"].values()
            schema = content["schema"]
            assert "type" in schema or "$ref" in schema, (method, path, schema)
        problems = {code: r for code, r in operation["responses"].items() if code[0] in "45"}
        assert problems or (method, path) == ("get", "/v1/health"), (method, path)  # liveness takes nothing
        for code, problem in problems.items():
            assert list(problem["content"]) == ["application/problem+json"], (method, path, code)
            assert {"type", "title", "status", "detail"} <= set(problem["content"]["application/problem+json"]
                                                                ["schema"]["required"])


class _Schema:
    """An answer's schema as /openapi.json declares it (its `$ref`s resolved in the document)."""

    def __init__(self, spec: dict[str, Any], method: str, path: str, status: str) -> None:
        content = spec["paths"][path][method]["responses"][status]["content"]["application/json"]
        self.schema = {**content["schema"], "components": spec["components"]}

    def validate_python(self, body: Any) -> None:
        jsonschema.validate(body, self.schema, cls=jsonschema.Draft202012Validator)


def test_real_answers_are_what_the_schemas_say(served: Any) -> None:
    client, key, folder = served
    spec = _spec(served)

    def _model(client: TestClient, method: str, path: str, status: str = "200") -> _Schema:
        return _Schema(spec, method, path, status)

    me = {"Authorization": key["all"]}
    photo = (folder / "alice.png").read_bytes()
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        ("get", "/v1/health", "/v1/health", {}),
        ("get", "/v1/version", "/v1/version", {}),
        ("post", "/v1/consents", "/v1/consents", {"json": {"subject": "dave", "reference": "REF-9",
                                                           "purposes": [PURPOSE]}}),
        ("get", "/v1/consents", "/v1/consents", {}),
        ("get", "/v1/consents/{ref}", "/v1/consents/REF-9", {}),
        ("post", "/v1/subjects/{subject}/photos", "/v1/subjects/dave/photos",
         {"files": {"photos": ("d.png", (fake_photo(folder, "d.png", (7, 0))).read_bytes())},
          "data": {"consent_ref": "REF-9"}}),
        ("get", "/v1/subjects", "/v1/subjects", {}),
        ("get", "/v1/subjects/{subject}/export", "/v1/subjects/alice/export", {}),
        ("post", "/v1/match", "/v1/match", {"files": {"photo": ("p.png", photo)}, "data": {"purpose": PURPOSE}}),
        ("post", "/v1/verify", "/v1/verify", {"files": {"photo": ("p.png", photo)},
                                              "data": {"purpose": PURPOSE, "subject": "alice"}}),
        ("get", "/v1/audit", "/v1/audit", {}),
        ("get", "/v1/audit/verify", "/v1/audit/verify", {}),
        ("get", "/v1/retention", "/v1/retention", {}),
        ("get", "/v1/apikeys", "/v1/apikeys", {}),
        ("post", "/v1/apikeys", "/v1/apikeys", {"json": {"name": "new", "roles": ["auditor"]}}),
        ("delete", "/v1/apikeys/{name}", "/v1/apikeys/new", {}),
        ("get", "/v1/policy", "/v1/policy", {}),
        ("put", "/v1/policy/{key}", "/v1/policy/rate_limit", {"json": {"value": "600"}}),
        ("post", "/v1/purposes", "/v1/purposes", {"json": {"name": "door"}}),
        ("get", "/v1/purposes", "/v1/purposes", {}),
        ("delete", "/v1/purposes/{name}", "/v1/purposes/door", {}),
        ("delete", "/v1/consents/{ref}", "/v1/consents/REF-9", {}),
        ("delete", "/v1/subjects/{subject}", "/v1/subjects/bob", {}),
    ]
    for method, route, url, kw in calls:
        answer = client.request(method, url, headers=me, **kw)
        assert answer.status_code in (200, 201), (url, answer.text)
        _model(client, method, route, str(answer.status_code)).validate_python(answer.json())
    # a search held for approval (202) is a SearchRequest, as are the queue, one request and a decision
    held = client.post("/v1/match", headers={"Authorization": key["desk"]}, files={"photo": ("p.png", photo)},
                       data={"purpose": "law-enforcement", "case_ref": "C-1", "reason": "theft"})
    assert held.status_code == 202
    _model(client, "post", "/v1/match", "202").validate_python(held.json())
    request_id = held.json()["request_id"]
    _model(client, "get", "/v1/requests").validate_python(client.get("/v1/requests", headers=me).json())
    _model(client, "get", "/v1/requests/{request_id}").validate_python(
        client.get(f"/v1/requests/{request_id}", headers=me).json())
    approved = client.post(f"/v1/requests/{request_id}/approve", headers=me, json={"reason": "ok"})
    _model(client, "post", "/v1/requests/{request_id}/approve").validate_python(approved.json())
    mine = client.get(f"/v1/requests/{request_id}", headers={"Authorization": key["desk"]}).json()
    assert mine["result"] is not None
    _model(client, "get", "/v1/requests/{request_id}").validate_python(mine)


def test_lists_page_with_limit_and_offset_and_are_whole_without(served: Any) -> None:
    client, key, _ = served
    me = {"Authorization": key["all"]}
    for url in ("/v1/consents", "/v1/subjects", "/v1/audit", "/v1/retention", "/v1/apikeys", "/v1/purposes",
                "/v1/requests"):
        whole = client.get(url, headers=me)
        assert whole.status_code == 200 and "x-total-count" not in whole.headers  # as before paging
        items = whole.json()
        page = client.get(url, headers=me, params={"limit": 1, "offset": 1})
        assert page.status_code == 200, page.text
        assert page.json() == items[1:2] and page.headers["x-total-count"] == str(len(items))
        assert client.get(url, headers=me, params={"offset": 1}).json() == items[1:]
        assert client.get(url, headers=me, params={"offset": len(items) + 5}).json() == []
    subjects = client.get("/v1/subjects", headers=me).json()
    assert [s["subject"] for s in subjects] == ["alice", "bob", "carol"]
    assert client.get("/v1/subjects", headers=me, params={"limit": 2}).json() == subjects[:2]
    for wrong in ({"limit": 0}, {"offset": -1}, {"limit": "many"}):
        refused = client.get("/v1/subjects", headers=me, params=wrong)
        assert refused.status_code == 422 and refused.headers["content-type"].startswith("application/problem+json")


def test_an_operator_sees_only_its_own_requests_an_approver_all(served: Any) -> None:
    client, key, folder = served
    photo = (folder / "alice.png").read_bytes()
    desk = {"Authorization": key["desk"]}
    held = client.post("/v1/match", headers=desk, files={"photo": ("p.png", photo)},
                       data={"purpose": "law-enforcement", "case_ref": "C-1", "reason": "theft"}).json()
    other = client.post("/v1/match", headers={"Authorization": key["all"]}, files={"photo": ("p.png", photo)},
                        data={"purpose": "law-enforcement", "case_ref": "C-2", "reason": "fraud"}).json()
    assert [r["request_id"] for r in client.get("/v1/requests", headers=desk).json()] == [held["request_id"]]
    everyone = client.get("/v1/requests", headers={"Authorization": key["all"]}).json()
    assert [r["request_id"] for r in everyone] == [held["request_id"], other["request_id"]]
    hidden = client.get(f"/v1/requests/{other['request_id']}", headers=desk)
    assert hidden.status_code == 404
    # another's request and an id that does not exist read the same, but for the id: no existence oracle
    unknown_id = "0" * len(other["request_id"])
    unknown = client.get(f"/v1/requests/{unknown_id}", headers=desk)
    assert unknown.status_code == 404 and unknown_id != other["request_id"]
    assert hidden.json() == {**unknown.json(), "detail": unknown.json()["detail"].replace(unknown_id,
                                                                                          other["request_id"])}
    assert hidden.headers["content-type"] == unknown.headers["content-type"]
    assert hidden.json()["detail"].startswith("No search request you may read has the id")


def test_the_key_and_role_are_checked_before_the_body(served: Any) -> None:
    # roles are dependencies: a caller without a valid key, or without the role, learns nothing of
    # what the call takes (and a role refused is audited), whatever it sent
    client, key, _ = served
    for headers, status in (({}, 401), ({"Authorization": key["desk"]}, 403)):
        refused = client.post("/v1/consents", headers=headers, json={"subject": "x"})
        assert refused.status_code == status, refused.text
        refused = client.post("/v1/subjects/x/photos", headers=headers, data={"quality": "high"})
        assert refused.status_code == status, refused.text
    assert client.post("/v1/consents", headers={"Authorization": key["all"]}, json={"subject": "x"}).status_code == 422


OVERFLOWING = ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00")


def test_an_audit_bound_past_the_years_utc_can_hold_is_one_line_422_and_exit_2(served: Any) -> None:
    """Red team: `GET /v1/audit?since=9999-12-31T23:59:59-23:59` answered 500 (an OverflowError
    converting it to UTC in the store). The CLI refuses the same bounds with exit 2."""
    from typer.testing import CliRunner

    from consentmatch.cli import app

    client, key, folder = served
    me = {"Authorization": key["all"]}
    for bound in ("since", "until"):
        for text in OVERFLOWING:
            refused = client.get("/v1/audit", headers=me, params={bound: text})
            assert refused.status_code == 422, (bound, text, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
            body = refused.json()
            assert body["error"] == "InvalidArgumentError" and "\n" not in body["detail"]
            assert body["detail"].startswith(f"{bound} '{text}' is outside the years 1 to 9999 in UTC: write")
            cli = CliRunner().invoke(app, ["audit", "-g", str(folder / "g.db"), f"--{bound}", text])
            assert cli.exit_code == 2 and "Traceback" not in cli.output and len(cli.stderr.strip().splitlines()) == 1
    everything = client.get("/v1/audit", headers=me).json()
    zoned = client.get("/v1/audit", headers=me, params={"since": "2000-01-01T00:00:00+05:00",
                                                        "until": "9999-12-31T23:59:59+01:00"})
    assert zoned.status_code == 200 and zoned.json() == everything
    assert client.get("/v1/audit", headers=me, params={"until": "9999-12-31"}).json() == everything
    today = everything[-1]["at"][:10]  # a bare `until` takes that whole day, as the CLI's --until does
    assert client.get("/v1/audit", headers=me, params={"since": today, "until": today}).json()[-1] == everything[-1]
    cli = CliRunner().invoke(app, ["audit", "-g", str(folder / "g.db"), "--until", "x"])
    assert cli.exit_code == 2 and cli.stderr.startswith("error: --until 'x' is not a date or time: write YYYY-MM-DD")


def test_the_key_and_role_come_before_a_form_or_a_body_that_is_not_json(served: Any) -> None:
    """Red team: `POST /v1/match` without a key (or with a key of the wrong role) and no purpose
    answered 422 "Invalid purpose: Field required." (the searcher dependency declared the form
    field), and `POST /v1/consents` without a key with the body `x` 422 "Invalid 0: JSON decode error.":
    the body was read before the key."""
    client, key, folder = served
    photo = (folder / "alice.png").read_bytes()
    auditor = client.post("/v1/apikeys", headers={"Authorization": key["all"]},
                          json={"name": "reader", "roles": ["auditor"]}).json()["key"]
    for headers, status, error in (({}, 401, "AuthenticationError"),
                                   ({"Authorization": f"Bearer {auditor}"}, 403, "PermissionDeniedError")):
        for url in ("/v1/match", "/v1/verify"):
            for form in ({}, {"purpose": "p" * 65}, {"purpose": PURPOSE}):
                refused = client.post(url, headers=headers, files={"photo": ("p.png", photo)}, data=form)
                assert (refused.status_code, refused.json()["error"]) == (status, error), (url, form, refused.text)
        for body in (b"x", b'{"subject": ', b"\xff"):
            refused = client.post("/v1/consents", headers={**headers, "Content-Type": "application/json"},
                                  content=body)
            assert (refused.status_code, refused.json()["error"]) == (status, error), (body, refused.text)
        broken = client.post("/v1/match", headers={**headers, "Content-Type": "multipart/form-data; boundary=B"},
                             content=b"--B\r\nnot a part")
        assert broken.status_code == status, broken.text
    refusals = [e for e in client.app.state.gallery.audit(actor="reader") if e.details.get("outcome") == "refused"]
    assert len(refusals) == 2 * 3 + 3 + 1 and all(e.purpose in (None, PURPOSE) for e in refusals)  # each 403 audited
    # with the key and role, what the call sent is checked: one line, saying what to send
    me = {"Authorization": key["all"]}
    missing = client.post("/v1/match", headers=me, files={"photo": ("p.png", photo)})
    assert missing.status_code == 422 and missing.json()["detail"] == "Invalid purpose: Field required."
    long = client.post("/v1/match", headers=me, files={"photo": ("p.png", photo)}, data={"purpose": "p" * 65})
    assert long.status_code == 422 and "purpose" in long.json()["detail"]
    not_json = client.post("/v1/consents", headers={**me, "Content-Type": "application/json"}, content=b"x")
    assert not_json.status_code == 422 and not_json.json()["detail"] == (
        "The body is not valid JSON (Expecting value at character 0): send a JSON object with Content-Type: "
        "application/json.")
    desk = {"Authorization": key["desk"]}  # a key of the role: its search goes on as before
    assert client.post("/v1/match", headers=desk, files={"photo": ("p.png", photo)},
                       data={"purpose": PURPOSE}).status_code == 200
