"""A throwaway PostgreSQL cluster for the tests: `initdb` + `pg_ctl` in a temporary folder.

Started once per session (the `pg_cluster` fixture in conftest.py), on a unix socket in its own
folder and a free port, as the `postgres` user when the tests run as root (PostgreSQL refuses
to run as root). Each test that needs a gallery gets a database of its own (`new_database`).
Where no PostgreSQL binaries are installed, the tests that need one are skipped with the reason
(`.ci/run` installs them).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["Cluster", "find_bin"]


def find_bin() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: Debian's versioned folders (newest first), else PATH."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One running cluster; `url(db)` names a database in it, `new_database()` makes one."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="cmpg"))  # short: a socket path has at most 107 bytes
        self.data = self.folder / "data"
        self.port = _free_port()
        self._count = 0
        self._lock = threading.Lock()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            os.chown(self.folder, pwd.getpwnam("postgres").pw_uid, -1)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL program of this cluster's folder, as the user that owns the cluster."""
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=check)

    def start(self) -> None:
        if not self.data.exists():
            self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql:///{database}?host={self.folder}&port={self.port}&user=postgres"

    def psql(self, database: str, command: str) -> str:
        result = self.run("psql", "-X", "-q", "-t", "-A", "-h", str(self.folder), "-p", str(self.port), "-U", "postgres",
                          "-d", database, "-c", command)
        return result.stdout

    def new_database(self) -> str:
        """A new empty database; returns its URL (its keys database `<name>_keys` is created by the store)."""
        with self._lock:
            self._count += 1
            name = f"gallery{self._count}"
        self.psql("postgres", f"CREATE DATABASE {name}")
        return self.url(name)

    def dump(self, database: str) -> bytes:
        """`pg_dump` of a database, as the bytes a backup would hold."""
        command = [str(self.bindir / "pg_dump"), "-h", str(self.folder), "-p", str(self.port), "-U", "postgres", database]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, timeout=120, check=True).stdout
