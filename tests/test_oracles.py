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
            alice.authenticate(presented)
        assert str(caught.value).startswith("No valid API key")
    assert len(calls) == 4  # a wrong secret and an unknown id: one scrypt each, every time
    assert alice.authenticate(real).name == "desk"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_failed_authentication_is_rate_limited_per_key_id(http: Http, monkeypatch: pytest.MonkeyPatch) -> None:
    from consentmatch.services import access

    real = http.keys["auditor"]
    wrong = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    statuses = [http.client.get("/v1/subjects", headers=_bearer(wrong)).status_code for _ in range(10)]
    assert statuses == [401] * 10
    calls: list[str] = []
    monkeypatch.setattr(access, "_hash", lambda secret, salt: calls.append(secret) or b"")
    limited = http.client.get("/v1/subjects", headers=_bearer(wrong))
    body = _problem(limited, 429, "RateLimitError")
    assert int(limited.headers["Retry-After"]) >= 1 and "failed" in body["detail"]
    assert calls == []  # refused before any scrypt: a guesser costs the server nothing more
    # the key id is held whatever the secret; other keys are not
    _problem(http.client.get("/v1/subjects", headers=_bearer(real)), 429, "RateLimitError")
    monkeypatch.undo()
    assert http.client.get("/v1/policy", headers=_bearer(http.keys["admin"])).status_code == 200


def test_failed_authentication_is_rate_limited_per_client_address(http: Http, monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets

    from consentmatch.services import access

    # a fast hash: 40 calls well inside the seconds the buckets take to refill one attempt
    monkeypatch.setattr(access, "_hash", lambda secret, salt: b"\0" * 32)
    statuses = []
    for _ in range(40):
        guess = f"cm_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"  # a new key id each time
        statuses.append(http.client.get("/v1/subjects", headers=_bearer(guess)).status_code)
    assert statuses[:30] == [401] * 30 and set(statuses[30:]) == {429}
    refused = http.client.get("/v1/subjects", headers=_bearer(http.keys["auditor"]))
    _problem(refused, 429, "RateLimitError")  # this address waits, even with a good key
    signin = http.client.post("/v1/session", json={"key": f"cm_{'2' * 16}_{'z' * 43}"})
    _problem(signin, 429, "RateLimitError")  # the console's sign-in counts too
