"""The real server: `consentmatch serve` on a free loopback port, talked to over HTTP; and the
CLI side of keys and search requests (`apikey`, `request`, `match --case-ref`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from consentmatch.cli import app

from .conftest import EXAMPLES

runner = CliRunner()
PROBE = EXAMPLES / "probes" / "obama1.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def served(real_gallery_path: Path) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[str]]]:
    """A real `consentmatch serve` on the example gallery, with an operator and an approver key."""
    g = str(real_gallery_path)
    cli("policy", "set", "approval_purposes", "staff-access", "-g", g)
    keys = {role: json.loads(cli("apikey", "create", f"{role}-1", "-g", g, "--role", role, "--json"))["key"]
            for role in ("operator", "approver")}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "consentmatch", "serve", "-g", g, "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{base}/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        else:
            pytest.fail(f"the server did not start: {server.stderr.read() if server.poll() is not None else ''}")
        yield base, keys, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_real_server_matches_and_decides_over_http(served: tuple[str, dict[str, str], subprocess.Popen[str]]) -> None:
    base, keys, server = served
    operator = {"Authorization": f"Bearer {keys['operator']}"}
    photo = PROBE.read_bytes()
    match = httpx.post(f"{base}/v1/match", headers=operator, files={"photo": ("p.jpg", photo)},
                       data={"purpose": "visitor-check-in"}, timeout=60)
    assert match.status_code == 200 and match.json()["faces"][0]["subject"] == "obama"
    unauthorized = httpx.get(f"{base}/v1/subjects")
    assert unauthorized.status_code == 401 and unauthorized.headers["content-type"] == "application/problem+json"
    held = httpx.post(f"{base}/v1/match", headers=operator, files={"photo": ("p.jpg", photo)},
                      data={"purpose": "staff-access", "case_ref": "C-1", "reason": "report"}, timeout=60)
    assert held.status_code == 202
    request_id = held.json()["request_id"]
    approved = httpx.post(f"{base}/v1/requests/{request_id}/approve", json={"reason": "ok"}, timeout=60,
                          headers={"Authorization": f"Bearer {keys['approver']}"})
    assert approved.json()["status"] == "approved"
    result = httpx.get(f"{base}/v1/requests/{request_id}", headers=operator).json()["result"]
    assert result["faces"][0]["subject"] == "obama"
    openapi = httpx.get(f"{base}/openapi.json").json()
    assert "/v1/match" in openapi["paths"] and "/v1/requests/{request_id}/approve" in openapi["paths"]
    server.terminate()
    _, log = server.communicate(timeout=30)
    assert "POST /v1/match" in log  # the access log, on stderr: method and path, never a body
    assert photo[:64].hex() not in log and "obama" not in log


def test_cli_keys_and_requests(real_gallery_path: Path) -> None:
    g = str(real_gallery_path)
    created = json.loads(cli("apikey", "create", "desk-3", "-g", g, "--role", "operator", "--purpose",
                             "visitor-check-in", "--expires", "2030-01-01", "--json"))
    assert set(created) == {"name", "key", "roles", "purposes", "expires"} and created["key"].startswith("cm_")
    listed = [json.loads(line) for line in cli("apikey", "list", "-g", g, "--json").splitlines()]
    assert [k["name"] for k in listed] == ["desk-3"] and created["key"] not in json.dumps(listed)
    again = runner.invoke(app, ["apikey", "create", "desk-3", "-g", g, "--role", "operator"])
    assert again.exit_code == 2 and "exists" in again.stderr
    bad_role = runner.invoke(app, ["apikey", "create", "x", "-g", g, "--role", "root"])
    assert bad_role.exit_code == 2 and "Unknown role" in bad_role.stderr
    cli("apikey", "revoke", "desk-3", "-g", g)
    assert runner.invoke(app, ["apikey", "revoke", "desk-3", "-g", g]).exit_code == 1
    # the approval flow without the service
    cli("policy", "set", "approval_purposes", "staff-access", "-g", g)
    refused = runner.invoke(app, ["match", str(PROBE), "-g", g, "-p", "staff-access"])
    assert refused.exit_code == 1 and "approval" in refused.stderr
    half = runner.invoke(app, ["match", str(PROBE), "-g", g, "-p", "staff-access", "--case-ref", "C-9"])
    assert half.exit_code == 2 and "--reason" in half.stderr
    filed = json.loads(cli("match", str(PROBE), "-g", g, "-p", "staff-access", "--case-ref", "C-9", "--reason", "r",
                           "--actor", "det.smith", "--json"))
    assert filed["status"] == "pending"
    own = runner.invoke(app, ["request", "approve", filed["request_id"], "-g", g, "--reason", "x", "--actor", "det.smith"])
    assert own.exit_code == 1 and "another approver" in own.stderr
    cli("request", "approve", filed["request_id"], "-g", g, "--reason", "reviewed", "--actor", "lt.jones")
    shown = json.loads(cli("request", "show", filed["request_id"], "-g", g, "--actor", "det.smith", "--json"))
    assert shown["status"] == "approved" and shown["result"]["faces"][0]["subject"] == "obama"
    other = json.loads(cli("request", "show", filed["request_id"], "-g", g, "--actor", "someone", "--json"))
    assert other["result"] is None
    verify = json.loads(cli("verify", "obama", str(PROBE), "-g", g, "-p", "staff-access", "--case-ref", "C-10",
                            "--reason", "r", "--json"))
    assert verify["kind"] == "verify" and verify["subject"] == "obama"
    cli("request", "deny", verify["request_id"], "-g", g, "--reason", "no", "--actor", "lt.jones")
    assert [r["status"] for r in map(json.loads, cli("request", "list", "-g", g, "--json").splitlines())] == \
        ["approved", "denied"]
