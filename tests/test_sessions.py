"""Console sessions in process (FastAPI's test client): the cookie's flags, expiry, the CSRF
refusal, sign-out, and the console page's own headers. The browser itself: test_console.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient

from consentmatch import Gallery
from consentmatch.service import create_app
from consentmatch.results import ApiKeyInfo
from consentmatch.service import sessions as sessions_module
from consentmatch.service.auth import FAILED_PER_ADDRESS
from consentmatch.service.sessions import CSRF_COOKIE, SESSION_COOKIE, Sessions


@dataclass
class Console:
    client: TestClient
    gallery: Gallery
    keys: dict[str, str]
    clock: list[float]

    def sign_in(self, who: str, client: TestClient | None = None) -> Any:
        return (client or self.client).post("/v1/session", json={"key": self.keys[who]})


@pytest.fixture
def console(fake_gallery: Gallery) -> Iterator[Console]:
    keys = {role: fake_gallery.create_api_key(f"{role}-1", roles=[role]).key
            for role in ("admin", "operator", "auditor")}
    app = create_app(fake_gallery)
    clock = [1_000_000.0]
    app.state.sessions.clock = lambda: clock[0]
    with TestClient(app) as client:
        yield Console(client, fake_gallery, keys, clock)


def _cookie(response: Any, name: str) -> str:
    (line,) = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    return str(line)


def test_sign_in_sets_a_strict_httponly_session_cookie_and_a_readable_csrf_cookie(console: Console) -> None:
    signed = console.sign_in("auditor")
    assert signed.status_code == 201, signed.text
    assert signed.json()["key"]["name"] == "auditor-1" and console.keys["auditor"] not in signed.text
    session = _cookie(signed, SESSION_COOKIE).lower()
    assert "httponly" in session and "samesite=strict" in session and "path=/" in session
    assert "max-age=28800" in session and "secure" not in session  # plain http: no Secure flag
    csrf = _cookie(signed, CSRF_COOKIE).lower()
    assert "httponly" not in csrf and "samesite=strict" in csrf
    assert signed.json()["csrf_token"] == console.client.cookies[CSRF_COOKIE]
    assert console.client.get("/v1/subjects").status_code == 200  # the cookie stands for the key
    assert console.client.get("/v1/session").json()["key"]["roles"] == ["auditor"]
    assert console.client.get("/v1/version").json()["key"]["name"] == "auditor-1"


def test_the_cookie_is_secure_over_https(fake_gallery: Gallery) -> None:
    key = fake_gallery.create_api_key("desk", roles=["operator"]).key
    with TestClient(create_app(fake_gallery), base_url="https://console.example") as client:
        signed = client.post("/v1/session", json={"key": key})
        assert signed.status_code == 201
        assert "secure" in _cookie(signed, SESSION_COOKIE).lower() and "secure" in _cookie(signed, CSRF_COOKIE).lower()


def test_roles_still_hold_for_a_session(console: Console) -> None:
    console.sign_in("operator")
    refused = console.client.get("/v1/audit")
    assert refused.status_code == 403 and refused.json()["error"] == "PermissionDeniedError"


def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(console: Console) -> None:
    console.sign_in("admin")
    token = console.client.cookies[CSRF_COOKIE]
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
        refused = console.client.post("/v1/purposes", json={"name": "payroll"}, headers=headers)
        assert refused.status_code == 403, refused.text
        assert "CSRF" in refused.json()["detail"]
    assert "payroll" not in [p.purpose for p in console.gallery.purposes()]
    assert console.client.post("/v1/purposes", json={"name": "payroll"}, headers={"X-CSRF-Token": token}).status_code == 201
    # a bearer-key call needs no token: a browser never sends that header on a forged request
    bearer = TestClient(console.client.app).post("/v1/purposes", json={"name": "canteen"},
                                                 headers={"Authorization": f"Bearer {console.keys['admin']}"})
    assert bearer.status_code == 201


def _refusals(gallery: Gallery) -> list[dict[str, Any]]:
    return [e.to_dict() for e in gallery.audit() if e.details.get("outcome") == "refused"]


def test_a_change_without_the_csrf_token_is_audited_without_any_secret(console: Console) -> None:
    """Red team: the CSRF 403 was raised while authenticating, before the try that audits 403s, so
    a forged change left no event, though README promises every 403 is recorded."""
    signed = console.sign_in("admin")
    secrets = [console.keys["admin"], console.client.cookies[SESSION_COOKIE], signed.json()["csrf_token"]]
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        assert console.client.post("/v1/purposes", json={"name": "payroll"}, headers=headers).status_code == 403
    assert console.client.delete("/v1/session").status_code == 403  # a forged sign-out: a route of no role
    events = _refusals(console.gallery)
    assert [(e["actor"], e["action"], e["details"]["call"]) for e in events] == [
        ("admin-1", "purpose-add", "POST /v1/purposes"), ("admin-1", "purpose-add", "POST /v1/purposes"),
        ("admin-1", "call", "DELETE /v1/session")]
    assert all(e["details"]["error"] == "PermissionDeniedError" and "CSRF" in e["details"]["reason"] for e in events)
    trail = str([e.to_dict() for e in console.gallery.audit()])
    assert not [secret for secret in secrets if secret in trail]
    assert console.gallery.verify_audit().intact


def test_a_cross_site_sign_in_is_audited_and_its_address_throttled(console: Console) -> None:
    """The sign-in's Origin refusal (login CSRF) was audited nowhere. No key is checked before it,
    so its actor is the service's own word, and a sender refused too often gets 429 without
    another event: no one can fill the audit trail without a key."""
    key = console.keys["auditor"]
    cross = console.client.post("/v1/session", json={"key": key}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and "set-cookie" not in cross.headers
    (event,) = _refusals(console.gallery)
    assert (event["actor"], event["action"], event["subject"]) == ("service:anonymous", "call", None)
    assert event["details"]["call"] == "POST /v1/session" and event["details"]["origin"] == "https://evil.example"
    assert event["details"]["error"] == "PermissionDeniedError" and "own page" in event["details"]["reason"]
    assert key not in str([e.to_dict() for e in console.gallery.audit()])
    hidden = console.client.post("/v1/session", json={"key": key}, headers={"Origin": "https://e\x7fvil.example"})
    assert hidden.status_code == 403 and _refusals(console.gallery)[-1]["details"]["origin"] == "https://e\\x7fvil.example"
    answers = [console.client.post("/v1/session", json={"key": key}, headers={"Origin": "https://evil.example"})
               for _ in range(FAILED_PER_ADDRESS + 5)]
    assert [a.status_code for a in answers].count(429) == 7 and answers[-1].headers["retry-after"]
    assert len(_refusals(console.gallery)) == FAILED_PER_ADDRESS
    assert console.gallery.verify_audit().intact


def test_sessions_expire_when_idle_and_after_their_lifetime(console: Console) -> None:
    console.sign_in("auditor")
    console.clock[0] += 29 * 60
    assert console.client.get("/v1/subjects").status_code == 200  # within the idle limit: it restarts
    console.clock[0] += 29 * 60
    assert console.client.get("/v1/subjects").status_code == 200
    console.clock[0] += 31 * 60
    idle = console.client.get("/v1/subjects")
    assert idle.status_code == 401 and "sign in again" in idle.json()["detail"]
    console.sign_in("auditor")
    for _ in range(17):  # active all day: the lifetime (8 h) still ends it
        console.clock[0] += 29 * 60
        last = console.client.get("/v1/subjects")
    assert last.status_code == 401


def test_sign_out_ends_the_session_and_clears_the_cookies(console: Console) -> None:
    console.sign_in("auditor")
    session_id = console.client.cookies[SESSION_COOKIE]
    assert console.client.delete("/v1/session").status_code == 403  # a forged sign-out: no token
    out = console.client.delete("/v1/session", headers={"X-CSRF-Token": console.client.cookies[CSRF_COOKIE]})
    assert out.status_code == 204
    assert 'max-age=0' in _cookie(out, SESSION_COOKIE).lower()
    replayed = TestClient(console.client.app, cookies={SESSION_COOKIE: session_id}).get("/v1/subjects")
    assert replayed.status_code == 401  # the old cookie is worth nothing now


def test_a_revoked_key_ends_its_sessions(console: Console) -> None:
    console.sign_in("operator")
    assert console.client.get("/v1/purposes").status_code == 200
    console.gallery.revoke_api_key("operator-1")
    gone = console.client.get("/v1/purposes")
    assert gone.status_code == 401 and "revoked" in gone.json()["detail"]


def test_sign_in_refuses_a_bad_key_and_another_site(console: Console) -> None:
    bad = console.client.post("/v1/session", json={"key": console.keys["auditor"][:-3] + "AAA"})
    assert bad.status_code == 401 and SESSION_COOKIE not in bad.headers.get("set-cookie", "")
    cross = console.client.post("/v1/session", json={"key": console.keys["auditor"]},
                                headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and "set-cookie" not in cross.headers
    form = console.client.post("/v1/session", data={"key": console.keys["auditor"]})  # a cross-site form post
    assert form.status_code == 422


def test_the_console_page_is_self_only_and_never_cached(console: Console) -> None:
    page = console.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    assert 'id="sign-in-form"' in page.text and "<script>" not in page.text  # no inline script
    script = console.client.get("/console/console.js")
    assert script.status_code == 200 and "text/javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == csp
    style = console.client.get("/console/console.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert console.client.get("/console/../app.py").status_code == 404
    assert console.client.get("/console/index.htm").status_code == 404


def test_sessions_are_bounded_in_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions_module, "MAX_SESSIONS", 3)
    sessions = Sessions(clock=lambda: 0.0)
    key = ApiKeyInfo("desk", ("operator",), (), None, datetime.now(timezone.utc))
    ids = [sessions.start(key)[0] for _ in range(4)]
    assert sessions.find(ids[0]) is None and all(sessions.find(i) is not None for i in ids[1:])
    assert sessions.find("nope") is None and sessions.find(None) is None


def test_a_session_tells_its_idle_deadline_and_its_latest_end() -> None:
    """Issue 24 item 15: the console said "ends at <idle deadline> at the latest"; the latest end is
    the sign-in plus the lifetime, and the idle deadline moves with each request."""
    now = [1_000_000.0]
    sessions = Sessions(lifetime=8 * 3600, idle=30 * 60, clock=lambda: now[0])
    key = ApiKeyInfo("desk", ("operator",), (), None, datetime.now(timezone.utc))
    session_id, session = sessions.start(key)
    at = datetime.fromtimestamp
    assert sessions.times(session) == {"expires_at": at(now[0] + 1800, timezone.utc).isoformat(),
                                       "ends_by": at(now[0] + 8 * 3600, timezone.utc).isoformat(),
                                       "idle_timeout_s": 1800}
    now[0] += 600
    seen = sessions.find(session_id)
    assert seen is not None
    assert sessions.expires_at(seen) == at(now[0] + 1800, timezone.utc)  # the request just made counts
    assert sessions.ends_by(seen) == sessions.ends_by(session)
