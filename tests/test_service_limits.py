"""The service under load it must survive: a real `consentmatch serve` on a loopback port, with
thousands of stalled connections (slowloris), several 40-megapixel photos at once, a store that
goes away; and the headers of its documentation and health answers."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from consentmatch import Gallery
from consentmatch.cli import app

from .conftest import EXAMPLES
from .pg import Cluster, find_bin
from .test_service_server import free_port

runner = CliRunner()
FD_SOFT_LIMIT = 1024  # the server's, as a login shell's `ulimit -n` usually is


def _limit_fds() -> None:  # pragma: no cover - runs in the server's child process
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_SOFT_LIMIT, hard), hard))


@contextmanager
def serving(gallery: str, log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`consentmatch serve` on a free loopback port with `env` added, its log in `log`."""
    port = free_port()
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "consentmatch", "serve", "-g", gallery, "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=sink, env={**os.environ, **env},
                                  preexec_fn=_limit_fds)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{base}/v1/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None:
                    pytest.fail(f"the server did not start: {log.read_text()}")
                time.sleep(0.25)
        else:
            pytest.fail(f"the server did not start: {log.read_text()}")
        yield base, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def small_gallery(tmp_path: Path) -> str:
    path = tmp_path / "g.db"
    with Gallery(path) as gallery:
        gallery.declare_purpose("visitor-check-in")
    return str(path)


@contextmanager
def more_fds(wanted: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"this test opens {wanted} sockets; the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: closed too
        return True


# -- slowloris -------------------------------------------------------------------------------

STALLED = 3000  # three times the server's own limit on open files, six times the connection cap


@pytest.mark.slow
def test_stalled_connections_are_closed_and_real_calls_still_answer(small_gallery: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with more_fds(STALLED + 200), serving(small_gallery, log, CONSENTMATCH_HEADER_TIMEOUT="3",
                                          CONSENTMATCH_MAX_CONNECTIONS="500") as (base, server):
        port = int(base.rsplit(":", 1)[1])
        stalled: list[socket.socket] = []
        started = time.monotonic()
        try:
            while len(stalled) < STALLED and time.monotonic() - started < 30:
                sock = socket.socket()
                sock.settimeout(0.5)
                try:
                    sock.connect(("127.0.0.1", port))
                    sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")  # mid-headers, forever
                except OSError:
                    sock.close()
                    continue
                stalled.append(sock)
            assert len(stalled) > 1000, f"only {len(stalled)} connections could be opened"
            for _ in range(5):  # and a few that send whole headers, then stall inside the body
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"POST /v1/match HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                             b"boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n")
                stalled.append(sock)
            # Six real calls while the stalled connections are there: each answers, quickly.
            answers = []
            for _ in range(6):
                try:
                    answers.append(httpx.get(f"{base}/v1/health", timeout=5).status_code)
                except httpx.TransportError as exc:
                    answers.append(type(exc).__name__)
            assert answers == [200] * 6
            # Past the header deadline, the server has closed every stalled connection.
            time.sleep(3 + 3)
            still_open = sum(not _closed_by_peer(s) for s in stalled)
            assert still_open == 0, f"{still_open} of {len(stalled)} stalled connections are still open"
            assert httpx.get(f"{base}/v1/health", timeout=5).status_code == 200
        finally:
            for sock in stalled:
                sock.close()
    lines = log.read_text().splitlines()
    assert len(lines) < 100, f"{len(lines)} log lines: a flood"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.slow
def test_a_trickled_request_body_is_closed_too(small_gallery: str, tmp_path: Path) -> None:
    """A body sent a byte at a time, never pausing as long as the deadline, is closed all the same.

    Issue 24's red team: 1,100 such connections (no key needed) held every slot of the
    connection cap, and every real call was refused for as long as they trickled.
    """
    with serving(small_gallery, tmp_path / "serve.log", CONSENTMATCH_HEADER_TIMEOUT="2") as (base, _):
        port = int(base.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            sock.sendall(b"POST /v1/match HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n")
            started = time.monotonic()
            closed_after = None
            while time.monotonic() - started < 10:
                try:
                    sock.sendall(b"a")  # a byte every half second: never a 2 s pause
                except OSError:
                    closed_after = time.monotonic() - started
                    break
                time.sleep(0.5)
                if _closed_by_peer(sock):
                    closed_after = time.monotonic() - started
                    break
                sock.setblocking(True)
            assert closed_after is not None, "a body trickled for 10 s is still open"
            assert closed_after < 6
            assert httpx.get(f"{base}/v1/health", timeout=5).status_code == 200
        finally:
            sock.close()


# -- large photos ------------------------------------------------------------------------------


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the process's peak resident memory, kept by the kernel
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def legal_40mp_png(path: Path) -> Path:
    """An 8000x5000 PNG (exactly 40 megapixels, the decode limit) of ~1 MB with one face on it."""
    image = Image.new("RGB", (8000, 5000), (200, 180, 160))
    with Image.open(EXAMPLES / "probes" / "obama1.jpg") as face:
        image.paste(face.convert("RGB"), (100, 100))
    image.save(path, compress_level=1)
    return path


PHOTO_BUDGET_MB = 1200  # the server with its models (~220 MB) and two 40-megapixel photos at work


@pytest.mark.slow
def test_concurrent_40_megapixel_photos_stay_within_the_photo_slots(real_gallery_path: Path, tmp_path: Path) -> None:
    g = str(real_gallery_path)
    key = json.loads(runner.invoke(app, ["apikey", "create", "desk", "-g", g, "--role", "operator", "--json"]).stdout)["key"]
    photo = legal_40mp_png(tmp_path / "big.png").read_bytes()
    with serving(g, tmp_path / "serve.log", CONSENTMATCH_PHOTO_WORKERS="2") as (base, server):
        before = _peak_rss_mb(server.pid)
        answers: list[httpx.Response] = []

        def call() -> None:
            answers.append(httpx.post(f"{base}/v1/match", headers={"Authorization": f"Bearer {key}"},
                                      files={"photo": ("big.png", photo)}, data={"purpose": "visitor-check-in"},
                                      timeout=300))

        calls = [threading.Thread(target=call) for _ in range(3)]
        for thread in calls:
            thread.start()
        for thread in calls:
            thread.join()
        peak = _peak_rss_mb(server.pid)
        # Once the slots are free again, the refused call goes through.
        answers.append(httpx.post(f"{base}/v1/match", headers={"Authorization": f"Bearer {key}"},
                                  files={"photo": ("big.png", photo)}, data={"purpose": "visitor-check-in"},
                                  timeout=300))
    print(f"server peak RSS: {before:.0f} MB started, {peak:.0f} MB after 3 concurrent 40 MP PNGs")
    assert peak < PHOTO_BUDGET_MB, f"peak RSS {peak:.0f} MB (started at {before:.0f} MB)"
    statuses = sorted(a.status_code for a in answers[:3])
    assert statuses == [200, 200, 503], [a.text for a in answers]
    busy = next(a for a in answers if a.status_code == 503)
    assert busy.headers["content-type"] == "application/problem+json" and busy.headers["retry-after"] == "2"
    assert busy.json()["error"] == "ServiceBusyError" and "\n" not in busy.json()["detail"]
    assert answers[3].status_code == 200 and answers[3].json()["faces"][0]["subject"] == "obama"


def _multipart(boundary: str, purpose: str, photo: bytes) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()


def test_two_content_type_headers_are_refused_and_decode_no_photo(tmp_path: Path) -> None:
    """Red team: `PhotoSlots` read the last Content-Type (`dict(headers)`), Starlette parses the
    body by the first: multipart then text/plain was decoded as an upload without a slot, so N
    such requests decoded N 40-megapixel photos at once (3.49 GB where the slots allow 1.58)."""
    from fastapi.testclient import TestClient

    from consentmatch import Consent
    from consentmatch.service import create_app
    from consentmatch.settings import Settings

    from .conftest import FakeEncoder, fake_photo

    gallery = Gallery(tmp_path / "g.db", encoder=FakeEncoder(), actor="setup")
    gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("F-1", ["visitor-check-in"]))
    key = gallery.create_api_key("desk", roles=["operator"]).key
    body = _multipart("B", "visitor-check-in", fake_photo(tmp_path, "p.png", (10, 1)).read_bytes())
    upload = ("Content-Type", "multipart/form-data; boundary=B")
    try:
        with TestClient(create_app(gallery, Settings(photo_workers=1))) as client:
            bearer = ("Authorization", f"Bearer {key}")
            assert client.post("/v1/match", headers=[bearer, upload], content=body).status_code == 200  # one: fine
            calls = FakeEncoder.calls
            for headers in ([upload, ("Content-Type", "text/plain")], [("Content-Type", "text/plain"), upload],
                            [upload, upload], [("Content-Type", "application/json")] * 2):
                refused = client.post("/v1/match", headers=[bearer, *headers], content=body)
                assert refused.status_code == 400, (headers, refused.text)
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.json()["error"] == "HTTPError" and "Content-Type" in refused.json()["detail"]
                assert "\n" not in refused.json()["detail"]
            assert FakeEncoder.calls == calls  # no photo decoded or searched
            assert len(gallery.audit(action="match")) == 1
    finally:
        gallery.close()


def test_an_upload_beyond_the_slots_is_busy_whatever_its_content_type_headers() -> None:
    """With the one slot held, a second upload is answered 503 (one Content-Type) or 400 (two),
    never let through to decode its photo beside the first."""
    import asyncio

    from starlette.types import Message

    from consentmatch.service.limits import PhotoSlots

    reached: list[str] = []

    async def photo_work(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    async def answer(slots: PhotoSlots, *content_types: bytes) -> int:
        scope = {"type": "http", "method": "POST", "path": "/v1/match",
                 "headers": [(b"content-type", kind) for kind in content_types]}
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await slots(scope, receive, send)
        return int(next((m["status"] for m in sent if m["type"] == "http.response.start"), 0))

    slots = PhotoSlots(photo_work, 1)
    slots.busy = 1  # a request holds the one slot
    upload, text = b"multipart/form-data; boundary=B", b"text/plain"
    assert asyncio.run(answer(slots, upload)) == 503
    assert asyncio.run(answer(slots, b"  Multipart/Form-Data; boundary=B")) == 503
    assert asyncio.run(answer(slots, upload, text)) == 400
    assert asyncio.run(answer(slots, text, upload)) == 400
    assert reached == []
    slots.busy = 0
    assert asyncio.run(answer(slots, upload)) == 0 and reached == ["/v1/match"]  # a free slot: through


def test_a_photo_over_the_pixel_limit_is_one_line_in_the_cli(real_gallery_path: Path, tmp_path: Path) -> None:
    big = tmp_path / "huge.png"
    Image.new("L", (6400, 6400), 128).save(big, compress_level=1)  # 41 megapixels
    result = runner.invoke(app, ["match", str(big), "-g", str(real_gallery_path), "-p", "visitor-check-in"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "40 megapixel" in lines[0] and "downscale" in lines[0]


# -- readiness ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_readiness_follows_the_store_while_liveness_stays_ok(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from consentmatch.service import create_app

    bindir = find_bin()
    if bindir is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("PostgreSQL is not installed")
    assert bindir is not None
    cluster = Cluster(bindir)  # its own cluster: stopping it disturbs no other test
    try:
        cluster.start()
        with Gallery(cluster.new_database()) as gallery:
            gallery.declare_purpose("visitor-check-in")
            client = TestClient(create_app(gallery))
            assert client.get("/v1/health/ready").json() == {"status": "ready"}
            cluster.stop()
            down = client.get("/v1/health/ready")
            assert down.status_code == 503 and down.headers["content-type"] == "application/problem+json"
            assert down.headers["retry-after"] == "5" and down.headers["cache-control"] == "no-store"
            assert "postgresql" not in down.text and cluster.folder.name not in down.text  # no location to strangers
            live = client.get("/v1/health")
            assert live.status_code == 200 and live.json() == {"status": "ok"}  # liveness: the process answers
            cluster.start()
            for _ in range(20):  # the pool reconnects
                if client.get("/v1/health/ready").status_code == 200:
                    break
                time.sleep(0.5)
            assert client.get("/v1/health/ready").json() == {"status": "ready"}
    finally:
        cluster.close()


# -- headers and documentation -----------------------------------------------------------------


def test_docs_load_nothing_from_another_origin_and_every_answer_has_the_headers(fake_gallery: Gallery) -> None:
    from fastapi.testclient import TestClient

    from consentmatch.service import create_app

    client = TestClient(create_app(fake_gallery))
    for page in ("/docs", "/redoc"):
        answer = client.get(page)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        assert "<script" not in answer.text and "http://" not in answer.text and "https://" not in answer.text
        assert "/v1/match" in answer.text and 'href="/openapi.json"' in answer.text
        assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    for url in ("/v1/health", "/openapi.json", "/docs", "/v1/subjects", "/v1/health/ready", "/nowhere"):
        answer = client.get(url)
        assert answer.headers["cache-control"] == "no-store", url
        assert answer.headers["x-content-type-options"] == "nosniff", url
        assert answer.headers["x-frame-options"] == "DENY", url
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], url
    assert client.get("/v1/health").json() == {"status": "ok"}
    assert client.get("/v1/health/ready").json() == {"status": "ready"}
    # the console's page keeps its own policy (its scripts, its styles)
    assert "script-src 'self'" in client.get("/").headers["content-security-policy"]


def test_repeated_warnings_are_held_back_and_counted() -> None:
    import logging

    from consentmatch.service.server import RateLimitedLog

    limiter = RateLimitedLog(window=60, burst=5)

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, message, None, None)

    passed = [limiter.filter(record("Invalid HTTP request received.")) for _ in range(1000)]
    assert sum(passed) == 5
    assert limiter.filter(record("another message"))  # each kind has its own budget
    assert limiter.filter(logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "x", None, None))
    limiter.window = 0  # the next window: one line says how many were held back
    first = record("Invalid HTTP request received.")
    assert limiter.filter(first) and "995 more like it" in first.getMessage()


def test_the_limits_are_settings_with_one_line_errors() -> None:
    from consentmatch.errors import InvalidArgumentError
    from consentmatch.settings import Settings

    assert Settings.from_env({}).header_timeout == 10 and Settings.from_env({}).max_connections == 1000
    assert Settings.from_env({}).photo_slots >= 2
    read = Settings.from_env({"CONSENTMATCH_HEADER_TIMEOUT": "2.5", "CONSENTMATCH_PHOTO_WORKERS": "3"})
    assert read.header_timeout == 2.5 and read.photo_slots == 3
    for env, value in (("CONSENTMATCH_MAX_CONNECTIONS", "many"), ("CONSENTMATCH_HEADER_TIMEOUT", "0"),
                       ("CONSENTMATCH_KEEP_ALIVE", "nan"), ("CONSENTMATCH_PHOTO_WORKERS", "-1")):
        with pytest.raises(InvalidArgumentError, match=env) as error:
            Settings.from_env({env: value})
        assert "\n" not in str(error.value)


def test_the_loops_accept_errors_are_one_line_without_a_traceback() -> None:
    """Under a flood asyncio logs accept() failures with their traceback (seen under load as a
    traceback in the server's log): the filter makes each one line, and rate-limits them."""
    import logging
    import sys

    from consentmatch.service.server import RateLimitedLog

    limiter = RateLimitedLog(window=60, burst=5)
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource",
                               None, exc_info)
    assert limiter.filter(record) and record.exc_info is None
    assert logging.Formatter().format(record).count("\n") == 0
    assert "OSError: [Errno 24] Too many open files" in record.getMessage()


def test_problem_types_are_kebab_case_with_acronyms_whole(fake_gallery: Gallery) -> None:
    """Red team: 404 and 405 had the type `...:problem:h-t-t-p` (every capital of HTTPError split).
    The other types are a contract: each stays what it was."""
    import re

    from fastapi.testclient import TestClient

    from consentmatch import errors
    from consentmatch.service import create_app
    from consentmatch.service.problems import _slug

    client = TestClient(create_app(fake_gallery))
    for answer in (client.get("/nowhere"), client.put("/v1/health")):
        assert answer.status_code in (404, 405) and answer.json()["type"] == "tag:consentmatch,2026:problem:http"
    assert client.get("/v1/subjects").json()["type"] == "tag:consentmatch,2026:problem:authentication"
    names = [n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.ConsentMatchError)]
    names += ["ContentTooLarge", "InternalError"]
    assert len(names) > 20
    for name in names:  # the old rule, for names without an acronym: a hyphen before every capital
        assert _slug(name) == re.sub(r"(?<!^)(?=[A-Z])", "-", name.removesuffix("Error") or name).lower(), name
    assert _slug("PermissionDeniedError") == "permission-denied" and _slug("ConsentMatchError") == "consent-match"
