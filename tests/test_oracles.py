"""Issue 24, oracles and leaks: a tolerance cap (`max_tolerance`), one answer from verify whether
or not a name is enrolled, keyed and erasable idempotent answers with one winner, and failed
authentication that is rate-limited and costs the same for every key id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from consentmatch import Consent, Gallery, InvalidArgumentError
from consentmatch.service import create_app

from .conftest import PURPOSE, FakeEncoder, fake_photo
from .test_cli import run

# -- item 5: the tolerance a caller may pass is capped by the policy's `max_tolerance` --------


@pytest.fixture
def alice(fake_gallery: Gallery, tmp_path: Path) -> Gallery:
    fake_gallery.enroll("alice", [fake_photo(tmp_path, "alice.png", (10, 0))], Consent("R1", [PURPOSE]))
    return fake_gallery


def test_a_loose_tolerance_is_refused_for_every_search(alice: Gallery, tmp_path: Path) -> None:
    stranger = fake_photo(tmp_path, "bob.png", (20, 0))  # about 1.4 from alice: nobody she could be
    for search in (
        lambda: alice.match(stranger, purpose=PURPOSE, tolerance=1.5),
        lambda: list(alice.match_many([stranger], purpose=PURPOSE, tolerance=1.5)),
        lambda: alice.verify("alice", stranger, purpose=PURPOSE, tolerance=1.5),
    ):
        with pytest.raises(InvalidArgumentError, match=r"over this gallery's limit of 0\.6 \(policy max_tolerance\)"):
            search()
    assert not [e for e in alice.audit() if e.action in ("match", "verify")]  # a usage error: nothing searched
    assert alice.match(stranger, purpose=PURPOSE, tolerance=0.4).faces[0].subject is None  # stricter: fine
    alice.set_policy("max_tolerance", "1.5")  # an administrator may loosen the cap, on the record
    assert alice.match(stranger, purpose=PURPOSE, tolerance=1.5).faces[0].subject == "alice"


def test_the_cap_follows_the_policy_tolerance_and_the_two_stay_consistent(alice: Gallery) -> None:
    assert alice.policy()["max_tolerance"] is None  # null: the policy's (calibrated) tolerance
    alice.set_policy("tolerance", "0.65")  # as `calibrate` stores it
    alice.match(fake_photo(Path(alice.path).parent, "p.png", (10, 1)), purpose=PURPOSE, tolerance=0.65)
    alice.set_policy("max_tolerance", "0.7")
    with pytest.raises(InvalidArgumentError, match="max_tolerance"):
        alice.set_policy("tolerance", "0.8")  # a default above the cap would refuse every search
    with pytest.raises(InvalidArgumentError, match="tolerance"):
        alice.set_policy("max_tolerance", "0.5")
    alice.set_policy("max_tolerance", "null")
    assert alice.policy()["max_tolerance"] is None


def test_cli_refuses_a_tolerance_over_the_cap_with_exit_2(
    fake_cli_gallery: Path, tmp_path: Path
) -> None:
    stranger = fake_photo(tmp_path, "bob.png", (20, 0))
    for command in (["match", stranger], ["verify", "alice", stranger]):
        result = run(*command, "-g", fake_cli_gallery, "-p", PURPOSE, "--tolerance", "1.5")
        assert result.exit_code == 2, result.output
        assert "max_tolerance" in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def fake_cli_gallery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())
    db = tmp_path / "cli.db"
    assert run("enroll", "alice", fake_photo(tmp_path, "a.png", (10, 0)), "-g", db, "-c", "R1", "-p",
               PURPOSE).exit_code == 0
    return db


# -- the service over a fake-encoder gallery ---------------------------------------------------


class Http:
    def __init__(self, client: TestClient, gallery: Gallery, keys: dict[str, str]) -> None:
        self.client, self.gallery, self.keys = client, gallery, keys

    def post(self, who: str, url: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[who]}", **kw.pop("headers", {})}
        return self.client.post(url, headers=headers, **kw)

    def photo(self, url: str, path: Path, **form: Any) -> Any:
        return self.post("operator", url, files={"photo": (path.name, path.read_bytes())}, data=form)


@pytest.fixture
def http(alice: Gallery) -> Iterator[Http]:
    keys = {role: alice.create_api_key(f"{role}-1", roles=[role]).key
            for role in ("admin", "enroller", "operator", "auditor")}
    with TestClient(create_app(alice)) as client:
        yield Http(client, alice, keys)


def _problem(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["error"] == error and "\n" not in body["detail"]
    return body


def test_http_refuses_a_tolerance_over_the_cap_with_422(http: Http, tmp_path: Path) -> None:
    stranger = fake_photo(tmp_path, "bob.png", (20, 0))
    match = http.photo("/v1/match", stranger, purpose=PURPOSE, tolerance="0.7")
    assert "max_tolerance" in _problem(match, 422, "InvalidArgumentError")["detail"]
    verify = http.photo("/v1/verify", stranger, subject="alice", purpose=PURPOSE, tolerance="2")
    _problem(verify, 422, "InvalidArgumentError")
    assert http.photo("/v1/match", stranger, purpose=PURPOSE, tolerance="0.6").status_code == 200


# -- item 6: verify gives one answer whether or not the name is enrolled -----------------------


def _same(body: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs between any two calls (the name asked, the time, the event)."""
    return {k: v for k, v in body.items() if k not in ("subject", "at", "audit_event")}


def test_verify_answers_an_unknown_name_as_a_non_match(alice: Gallery, tmp_path: Path) -> None:
    alice.grant_consent("carol", Consent("R3", [PURPOSE]))  # consented, no photo
    alice.declare_purpose("payroll")
    stranger = fake_photo(tmp_path, "bob.png", (20, 0))
    answers = {(name, purpose): alice.verify(name, stranger, purpose=purpose)
               for name, purpose in [("alice", PURPOSE), ("zed", PURPOSE), ("carol", PURPOSE), ("alice", "payroll")]}
    bodies = [_same(a.to_dict()) for a in answers.values()]
    assert all(body == bodies[0] for body in bodies), bodies
    assert bodies[0]["match"] is False and bodies[0]["distance"] is None  # no near-miss measure either
    # the auditor still sees which was which, under the name asked
    events = {e.seq: e for e in alice.audit(action="verify")}
    zed = events[answers["zed", PURPOSE].audit_event]
    assert (zed.subject, zed.details["outcome"], zed.details["error"]) == ("zed", "refused", "NoActiveEnrollmentError")
    miss = events[answers["alice", PURPOSE].audit_event]
    assert miss.details["match"] is False and miss.details["shown"][0]["distance"] > 0.6
    # an unreadable or faceless probe is refused the same way for both
    empty = fake_photo(tmp_path, "none.png")
    for name in ("alice", "zed"):
        with pytest.raises(Exception) as caught:
            alice.verify(name, empty, purpose=PURPOSE)
        assert type(caught.value).__name__ == "NoFaceError"
    assert alice.verify("alice", fake_photo(tmp_path, "a2.png", (10, 1)), purpose=PURPOSE).match


def test_http_verify_of_an_enrolled_and_an_unknown_name_are_one_answer(http: Http, tmp_path: Path) -> None:
    stranger = fake_photo(tmp_path, "bob.png", (20, 0))
    enrolled = http.photo("/v1/verify", stranger, subject="alice", purpose=PURPOSE)
    unknown = http.photo("/v1/verify", stranger, subject="zed", purpose=PURPOSE)
    assert enrolled.status_code == unknown.status_code == 200, (enrolled.text, unknown.text)
    assert _same(enrolled.json()) == _same(unknown.json())
    assert unknown.json()["match"] is False and unknown.json()["subject"] == "zed"
    empty = fake_photo(tmp_path, "none.png")
    faceless = [http.photo("/v1/verify", empty, subject=name, purpose=PURPOSE) for name in ("alice", "zed")]
    assert faceless[0].status_code == faceless[1].status_code == 422
    assert faceless[0].json()["detail"] == faceless[1].json()["detail"]


def test_cli_verify_of_an_unknown_name_is_a_non_match(fake_cli_gallery: Path, tmp_path: Path) -> None:
    import json

    stranger = fake_photo(tmp_path, "bob.png", (20, 0))
    results = [run("verify", name, stranger, "-g", fake_cli_gallery, "-p", PURPOSE, "--json") for name in ("alice", "zed")]
    assert [r.exit_code for r in results] == [0, 0], [r.output for r in results]
    bodies = [_same(json.loads(r.stdout)) for r in results]
    assert bodies[0] == bodies[1] and bodies[0]["match"] is False
    table = run("verify", "zed", stranger, "-g", fake_cli_gallery, "-p", PURPOSE)
    assert table.exit_code == 0 and "NO MATCH" in table.stdout


# -- item 8: failed authentication costs the same for every key id and is rate-limited ---------


def test_an_unknown_key_id_costs_the_same_scrypt_as_a_wrong_secret(
    alice: Gallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consentmatch import AuthenticationError
    from consentmatch.services import access

    real = alice.create_api_key("desk", roles=["operator"]).key
    calls: list[str] = []
    hash_ = access._hash
    monkeypatch.setattr(access, "_hash", lambda secret, salt: calls.append(secret) or hash_(secret, salt))
    key_id = real.split("_")[1]
    for presented in (f"cm_{key_id}_{'x' * 43}", f"cm_{'0' * 16}_{'x' * 43}", f"cm_{key_id}_{'y' * 43}",
                      f"cm_{'1' * 16}_{'y' * 43}"):
        with pytest.raises(AuthenticationError) as caught:
            access.authenticate(alice.context, presented)
        assert str(caught.value).startswith("No valid API key")
    assert len(calls) == 4  # a wrong secret and an unknown id: one scrypt each, every time
    assert access.authenticate(alice.context, real).name == "desk"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_failed_authentication_is_rate_limited_per_key_id(http: Http, monkeypatch: pytest.MonkeyPatch) -> None:
    from consentmatch.services import access

    real = http.keys["auditor"]
    assert http.client.get("/v1/subjects", headers=_bearer(real)).status_code == 200  # checked once: cached
    wrong = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    statuses = [http.client.get("/v1/subjects", headers=_bearer(wrong)).status_code for _ in range(10)]
    assert statuses == [401] * 10
    calls: list[str] = []
    monkeypatch.setattr(access, "_hash", lambda secret, salt: calls.append(secret) or b"")
    limited = http.client.get("/v1/subjects", headers=_bearer(wrong))
    body = _problem(limited, 429, "RateLimitError")
    assert int(limited.headers["Retry-After"]) >= 1 and "failed" in body["detail"]
    assert calls == []  # refused before any scrypt: a guesser costs the server nothing more
    # the key's holder, checked before, needs no scrypt and is not held up; other keys are not either
    assert http.client.get("/v1/subjects", headers=_bearer(real)).status_code == 200
    monkeypatch.undo()
    assert http.client.get("/v1/policy", headers=_bearer(http.keys["admin"])).status_code == 200


def test_failed_authentication_is_rate_limited_per_client_address(http: Http, monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets

    from consentmatch.services import access

    assert http.client.get("/v1/policy", headers=_bearer(http.keys["admin"])).status_code == 200  # checked once
    # a fast hash: 40 calls well inside the seconds the buckets take to refill one attempt
    monkeypatch.setattr(access, "_hash", lambda secret, salt: b"\0" * 32)
    statuses = []
    for _ in range(40):
        guess = f"cm_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"  # a new key id each time
        statuses.append(http.client.get("/v1/subjects", headers=_bearer(guess)).status_code)
    assert statuses[:30] == [401] * 30 and set(statuses[30:]) == {429}
    refused = http.client.get("/v1/subjects", headers=_bearer(http.keys["auditor"]))
    _problem(refused, 429, "RateLimitError")  # this address waits for any key not yet checked...
    assert http.client.get("/v1/policy", headers=_bearer(http.keys["admin"])).status_code == 200  # ...not a known one
    signin = http.client.post("/v1/session", json={"key": f"cm_{'2' * 16}_{'z' * 43}"})
    _problem(signin, 429, "RateLimitError")  # the console's sign-in counts too


# -- item 7: idempotent answers are keyed, expire, go with their subject, and have one winner --


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[Http, list[Any]]]:
    from datetime import datetime, timezone

    now = [datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)]
    with Gallery(tmp_path / "clocked.db", encoder=FakeEncoder(), clock=lambda: now[0]) as gallery:
        keys = {"enroller": gallery.create_api_key("enroller-1", roles=["enroller"]).key,
                "admin": gallery.create_api_key("admin-1", roles=["admin"]).key}
        with TestClient(create_app(gallery)) as client:
            yield Http(client, gallery, keys), now


def _rows(path: Path) -> list[tuple[Any, ...]]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT owner, key, fingerprint, status, body, created_at FROM idempotency").fetchall()
    finally:
        conn.close()


def _grant(http: Http, key: str, subject: str, reference: str, **extra: Any) -> Any:
    body = {"subject": subject, "reference": reference, "purposes": [PURPOSE], **extra}
    return http.post("enroller", "/v1/consents", json=body, headers={"Idempotency-Key": key})


def test_the_stored_fingerprint_is_keyed_not_a_hash_of_the_body(clocked: tuple[Http, list[Any]]) -> None:
    import hashlib

    http, _ = clocked
    assert _grant(http, "k-1", "rita", "FORM-1", email="rita@example.org").status_code == 201
    ((_, _, fingerprint, status, body, _),) = _rows(http.gallery.path)
    assert status == 201 and '"rita"' in body
    # the old fingerprint: a SHA-256 of the request, which anyone can recompute to test a guessed e-mail
    from consentmatch.service.app import ConsentIn

    guess = ConsentIn(subject="rita", reference="FORM-1", purposes=[PURPOSE], email="rita@example.org")
    assert fingerprint != hashlib.sha256(b"consent#" + guess.model_dump_json().encode()).hexdigest()
    assert len(fingerprint) == 64
    again = _grant(http, "k-1", "rita", "FORM-1", email="rita@example.org")
    assert again.status_code == 201 and again.json() == _grant(http, "k-1", "rita", "FORM-1",
                                                               email="rita@example.org").json()
    _problem(_grant(http, "k-1", "rita", "FORM-1", email="other@example.org"), 422, "InvalidArgumentError")


def test_stored_answers_expire_after_the_policy_ttl(clocked: tuple[Http, list[Any]]) -> None:
    from datetime import timedelta

    http, now = clocked
    assert http.gallery.policy()["idempotency_ttl_hours"] == 24
    assert _grant(http, "k-1", "rita", "FORM-1").status_code == 201
    now[0] += timedelta(hours=25)
    assert _grant(http, "k-2", "sam", "FORM-2").status_code == 201
    assert [row[1] for row in _rows(http.gallery.path)] == ["k-2"]  # erased, not only ignored
    # past its TTL the key is free again: a new request under it runs
    assert _grant(http, "k-1", "tom", "FORM-3").status_code == 201


def test_forget_and_revoke_erase_the_stored_answers_of_their_subject(
    clocked: tuple[Http, list[Any]], tmp_path: Path
) -> None:
    http, _ = clocked
    assert _grant(http, "k-rita", "rita", "FORM-1").status_code == 201
    assert _grant(http, "k-sam", "sam", "FORM-2").status_code == 201
    photo = fake_photo(tmp_path, "sam.png", (30, 0))
    enrolled = http.post("enroller", "/v1/subjects/sam/photos", files=[("photos", ("sam.png", photo.read_bytes()))],
                         data={"consent_ref": "FORM-2"}, headers={"Idempotency-Key": "k-sam-photo"})
    assert enrolled.status_code == 201, enrolled.text
    assert _grant(http, "k-uma", "uma", "FORM-3").status_code == 201
    revoked = http.client.delete("/v1/consents/FORM-1", headers={"Authorization": f"Bearer {http.keys['enroller']}"})
    assert revoked.status_code == 200, revoked.text
    assert sorted(row[1] for row in _rows(http.gallery.path)) == ["k-sam", "k-sam-photo", "k-uma"]
    forgot = http.client.delete("/v1/subjects/sam", headers={"Authorization": f"Bearer {http.keys['enroller']}"})
    assert forgot.status_code == 200, forgot.text
    assert [row[1] for row in _rows(http.gallery.path)] == ["k-uma"]
    assert all("sam" not in row[4] and "rita" not in row[4] for row in _rows(http.gallery.path))


@pytest.fixture
def store_http(gallery_location: str) -> Iterator[Http]:
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        gallery.grant_consent("seed", Consent("SEED", [PURPOSE]))
        keys = {"enroller": gallery.create_api_key("enroller-1", roles=["enroller"]).key}
        with TestClient(create_app(gallery)) as client:
            yield Http(client, gallery, keys)


def test_one_idempotency_key_has_one_winner_under_concurrency(store_http: Http) -> None:
    import threading

    http = store_http
    gallery = http.gallery
    started, finish = threading.Event(), threading.Event()
    grant = gallery.grant_consent

    def slow_grant(subject: str, consent: Consent, **kw: Any) -> Any:
        if subject == "first":
            started.set()
            finish.wait(10)  # the second call arrives while the first is at work
        return grant(subject, consent, **kw)

    gallery.grant_consent = slow_grant  # type: ignore[method-assign]
    answers: dict[str, Any] = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", _grant(http, "k-1", "first", "FORM-1")))
    first.start()
    assert started.wait(10)
    # the retries come to another service process on the same gallery (another machine, for PostgreSQL)
    with Gallery(gallery.location, encoder=FakeEncoder()) as other, TestClient(create_app(other)) as client:
        node = Http(client, other, http.keys)
        answers["second"] = _grant(node, "k-1", "second", "FORM-2")  # same key, another body
        answers["same"] = _grant(node, "k-1", "first", "FORM-1")  # same key and body, still running
    finish.set()
    first.join(10)
    assert answers["first"].status_code == 201
    assert "different request" in _problem(answers["second"], 422, "InvalidArgumentError")["detail"]
    assert "still running" in _problem(answers["same"], 422, "InvalidArgumentError")["detail"]
    assert sorted(c.subject for c in gallery.consents()) == ["first", "seed"]  # only the winner took effect
    retry = _grant(http, "k-1", "first", "FORM-1")
    assert retry.status_code == 201 and retry.json() == answers["first"].json()


def test_a_failed_call_frees_its_idempotency_key(clocked: tuple[Http, list[Any]]) -> None:
    http, _ = clocked
    _problem(_grant(http, "k-1", "rita", "FORM-1", expires="2000-01-01"), 409, "ConsentError")  # expired
    assert _rows(http.gallery.path) == []  # nothing kept: a corrected retry may use the key
    assert _grant(http, "k-1", "rita", "FORM-1").status_code == 201
