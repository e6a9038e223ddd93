"""The `consentmatch` command: a thin Typer adapter over `Gallery`, one command per verb.

Each command opens the gallery, calls one method, prints a table (or JSON with --json) on
stdout, and turns library errors into one line on stderr. Exit codes: 0 every input was
processed (no match is a result), 1 an input or the gallery failed, 2 a usage error.

    common.py       the app, the shared options, error mapping, printing helpers
    tables.py       the rich Console and tables, loaded at the first print (not at every start)
    faces.py        enroll, import, match, verify, forget, subjects, demo
    records.py      consent, policy, retention, purge, optout, audit, export, key
    evaluation.py   evaluate, calibrate
    service.py      serve, apikey, request
    transfer.py     copy (a gallery to another store)
"""

from __future__ import annotations

import copy
import logging
import sys
import warnings

import typer
from typer.main import get_command_name
from typer.models import CommandInfo

from . import evaluation, faces, records, service, transfer  # noqa: F401  (each registers its commands on `app`)
from .common import app, error, settings

__all__ = ["app", "main"]


def app_for(args: list[str]) -> typer.Typer:
    """The app that runs `args`: where the first names a top-level command (match, enroll, ...),
    a copy of `app` holding only that command and the root callback, so Typer builds one
    command's parameters, not all ~37 commands' (~40 ms of every start); for `--version` alone,
    none. Their help, errors and exit codes are the whole app's (tests/test_cli_entry.py compares
    them for every command). Anything else (nothing, other options first, a group such as
    `consent`, an unknown name) gets the whole app, which lists the commands and says which
    name is unknown."""
    if args == ["--version"]:
        return _holding([])
    named = [info for info in app.registered_commands if args and info.callback is not None
             and (info.name or get_command_name(info.callback.__name__)) == args[0]]
    return _holding(named) if named else app


def _holding(commands: list[CommandInfo]) -> typer.Typer:
    """A copy of `app` (its settings, its root callback with --version) with only `commands`."""
    narrow = copy.copy(app)
    narrow.registered_commands, narrow.registered_groups = commands, []
    return narrow


def main() -> None:
    """Console entry point: usage errors exit 2, and nothing ever ends in a traceback."""
    warnings.filterwarnings("ignore", category=UserWarning, module="face_recognition_models")
    # Pillow warns about corrupt EXIF and big images; the decoder already turns what matters into
    # one-line errors, so the warnings would only add noise (with file paths) to stderr.
    warnings.filterwarnings("ignore", module="PIL")
    # psycopg's pool logs each failed reconnection while a PostgreSQL server is down; the
    # command's own one-line error says it (storage/postgres.py), so they are not printed.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    try:
        app_for(sys.argv[1:])()
    except Exception as exc:  # a bug: say so in one line; the traceback only on request
        if settings().debug:
            raise
        error(f"unexpected {type(exc).__name__}: {exc} (rerun with CONSENTMATCH_DEBUG=1 for a traceback)")
        sys.exit(1)
