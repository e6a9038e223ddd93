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
    assert "Traceback" not in log.read_text()
