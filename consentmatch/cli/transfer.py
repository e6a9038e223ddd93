"""The command that moves a gallery between stores: copy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..text import shown as _shown
from .common import JsonOption, app, mapped_errors, out, print_json, settings


@app.command()
def copy(
    source: Annotated[str, typer.Argument(metavar="SRC", help="The gallery to copy: a file, or a postgresql:// URL.")],
    target: Annotated[str, typer.Argument(metavar="DST", help="A new gallery file, or an empty PostgreSQL database.")],
    key_dir: Annotated[
        Optional[Path],
        typer.Option("--key-dir", metavar="DIR", show_default=False,
                     help="The copy's own key folder (a file copy needs one): its data keys and gallery key file go "
                     "there; open the copy with CONSENTMATCH_KEY_DIR=DIR."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Copy a gallery to another store (SQLite to PostgreSQL and back), its audit chain verified at both ends.

    Every row moves as it is (templates stay sealed) with the data keys, still wrapped, into
    the copy's own key store; the same gallery key opens both. Nothing is written unless the
    source's audit chain and rows check out; the copy is then opened and checked the same way.
    A copy to another file needs --key-dir: in the same key folder the two would share their
    data keys, so forgetting someone in one would erase them in the other (refused).

    **Example:** `consentmatch copy visitors.db visitors-copy.db --key-dir ./copy-keys`
    """
    from ..services.transfer import copy_gallery

    with mapped_errors():
        report = copy_gallery(source, target, settings(), key_dir=key_dir)
    if as_json:
        print_json(report.to_dict())
        return
    out.print(f"Copied '{_shown(report.source)}' to '{_shown(report.target)}': {report.subjects} subject(s), "
              f"{report.templates} template(s), {report.consents} consent record(s), {report.audit_events} audit "
              f"event(s); audit chain verified at both ends (head {report.audit_head[:16]}).")
