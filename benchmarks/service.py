"""The service under a bounded load: `consentmatch serve` against whole processes per photo.

A gallery of the example people is imported, an operator key made, and `consentmatch serve` started
on a free loopback port (its own process, models loaded once). This process is the client: a fixed
number of requests at a fixed concurrency, then it stops, against `POST /v1/match` (the example
probes in turn) and `POST /v1/verify` (single-face probes against their person). The same photos then
go through `consentmatch match` as one whole process each (what a script calling the CLI per photo
pays) and through face_recognition's CLI, one process per photo (`--cpus 1`). Ratios are of the
time per photo: a whole process's over the service's p50 latency.

    uv run python benchmarks/service.py [--requests 45] [--concurrency 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from _report import report  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PURPOSE = "visitor-check-in"
PROBES = sorted((EXAMPLES / "probes").iterdir())
VERIFY = [("obama", "obama1.jpg"), ("alex_lacamoire", "alex_lacamoire1.jpg"), ("kit_harington", "johnsnow_test1.jpg")]


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"'{name}' not found: run this with `uv run python benchmarks/service.py`.")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load(base: str, key: str, calls: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Send every call, `concurrency` at a time; latency of each, errors counted."""
    headers = {"Authorization": f"Bearer {key}"}
    photos = {p: p.read_bytes() for p in {c["photo"] for c in calls}}

    def one(call: dict[str, Any]) -> tuple[float, int]:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            start = time.perf_counter()
            response = client.post(call["url"], files={"photo": (call["photo"].name, photos[call["photo"]])},
                                   data=call["data"])
            return time.perf_counter() - start, response.status_code

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, calls))
    wall = time.perf_counter() - start
    latencies = sorted(t for t, _ in done)
    return {
        "requests": len(calls),
        "requests_per_s": round(len(calls) / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "errors": sum(status != 200 for _, status in done),
    }


def _per_process(commands: list[list[str]], env: dict[str, str]) -> float:
    """Median seconds of one whole process per photo."""
    spent = []
    for command in commands:
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, env=env, check=False)
        spent.append(time.perf_counter() - start)
    return statistics.median(spent)


def run(requests: int, concurrency: int) -> dict[str, Any]:
    ours, peer = _tool("consentmatch"), _tool("face_recognition")
    with tempfile.TemporaryDirectory(prefix="consentmatch-service-") as folder:
        work = Path(folder)
        env = {**os.environ, "CONSENTMATCH_KEY_DIR": str(work / "keys"), "PYTHONWARNINGS": "ignore"}
        env.pop("CONSENTMATCH_GALLERY", None)
        gallery = str(work / "bench.db")
        subprocess.run([ours, "import", str(EXAMPLES / "consents.csv"), "-g", gallery], env=env, check=True,
                       capture_output=True)
        created = subprocess.run([ours, "apikey", "create", "bench", "-g", gallery, "--role", "operator",
                                  "--rate-limit", "1000000", "--json"], env=env, check=True, capture_output=True, text=True)
        key = json.loads(created.stdout)["key"]
        port = _free_port()
        server = subprocess.Popen([ours, "serve", "-g", gallery, "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            started = time.perf_counter()
            while True:
                try:
                    if httpx.get(f"{base}/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.perf_counter() - started > 120:
                        raise SystemExit("the service did not start in 120 s") from None
                    time.sleep(0.2)
            start_s = time.perf_counter() - started
            match_calls = [{"url": "/v1/match", "photo": PROBES[i % len(PROBES)], "data": {"purpose": PURPOSE}}
                           for i in range(requests)]
            verify_calls = [{"url": "/v1/verify", "photo": EXAMPLES / "probes" / VERIFY[i % len(VERIFY)][1],
                             "data": {"subject": VERIFY[i % len(VERIFY)][0], "purpose": PURPOSE}} for i in range(requests)]
            _load(base, key, match_calls[: len(PROBES)], concurrency)  # untimed: every probe once (lazy loads)
            match = _load(base, key, match_calls, concurrency)
            verify = _load(base, key, verify_calls, concurrency)
        finally:
            server.terminate()
            server.wait(timeout=30)
        known = work / "known"  # face_recognition's layout: the file name is the person
        known.mkdir()
        for person in sorted((EXAMPLES / "people").iterdir()):
            for number, photo in enumerate(sorted(person.iterdir()), start=1):
                shutil.copyfile(photo, known / f"{person.name}--{number}{photo.suffix.lower()}")
        cli_s = _per_process([[ours, "match", str(p), "-g", gallery, "--purpose", PURPOSE, "--json"] for p in PROBES], env)
        peer_s = _per_process([[peer, "--cpus", "1", str(known), str(p)] for p in PROBES], env)
    service_s = match["p50_ms"] / 1000
    return {
        "concurrency": concurrency,
        "service_start_s": round(start_s, 2),
        "match": match,
        "verify": verify,
        "cli_match_process_s": round(cli_s, 2),
        "face_recognition_process_s": round(peer_s, 2),
        "ratio_vs_cli_process": round(cli_s / service_s, 1),
        "ratio_vs_face_recognition_process": round(peer_s / service_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=45, help="requests per endpoint (default 45)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight at once (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report(run(args.requests, args.concurrency), args.json)


if __name__ == "__main__":
    main()
