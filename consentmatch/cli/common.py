"""What every command shares: the Typer app, the console, the common options, and the one
mapping of library errors to one line on stderr and an exit code (1, or 2 for a bad value)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.table import Table
from rich.cells import cell_len
from rich.text import Text

from ..errors import ConsentMatchError, InvalidArgumentError
from ..settings import Settings
from ..text import shown as _shown
from ..text import visible

if TYPE_CHECKING:
    from ..consent import Consent
    from ..gallery import Gallery
    from ..results import Erasure, SearchRequest

app = typer.Typer(
    name="consentmatch",
    help="Consent-based face matching: a gallery that holds only faces enrolled with a recorded consent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # never a traceback with locals (they could hold a probe)
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)



def _version(value: bool) -> None:
    if value:
        from .. import __version__

        choice = settings().encoder or "auto (onnx, else dlib)"
        print(f"consentmatch {__version__} (encoder: {choice})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and the encoder, then exit.")
    ] = False,
) -> None:
    """Consent-based face matching: a gallery that holds only faces enrolled with a recorded consent."""


# emoji=False: a subject named ":smile:" is shown as typed, not as an emoji.
out = Console(highlight=False, soft_wrap=True, emoji=False)

GalleryOption = Annotated[
    str,
    typer.Option(
        "--gallery",
        "-g",
        envvar="CONSENTMATCH_GALLERY",
        help="The gallery file (SQLite), or a postgresql:// URL (many machines); created by the first enrollment.",
        show_envvar=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output: JSON (Lines for lists).")]
PurposeOption = Annotated[
    Optional[str],
    typer.Option(
        "--purpose",
        "-p",
        help="Search only subjects whose active consent lists this purpose (required unless the policy's "
        "require_purpose is false).",
    ),
]
QualityOption = Annotated[
    Optional[str],
    typer.Option(
        "--quality",
        help="Quality bar for enrollment photos: off, low, medium or high (default: the gallery policy's, medium).",
        show_default=False,
    ),
]
DuplicateOption = Annotated[
    bool,
    typer.Option("--allow-duplicate", help="Enroll even when a face matches another enrolled subject (twins)."),
]
ActorOption = Annotated[
    Optional[str],
    typer.Option(
        "--actor",
        envvar="CONSENTMATCH_ACTOR",
        help="Who is calling, for the audit trail (default: local:<OS user>).",
        show_envvar=True,
    ),
]
MinFaceOption = Annotated[
    int,
    typer.Option(
        "--min-face-px", min=1, max=10_000,
        help="Narrowest face looked for, in the photo's pixels (face_recognition's reach: 40). "
        "Larger is faster when faces are always larger (a door camera: 80 halves the work on big photos).",
    ),
]
def _detector_name(value: str | None) -> str | None:
    from ..vision.types import DETECTORS

    if value is not None and value.strip().lower() not in DETECTORS:
        raise typer.BadParameter(f"{visible(value)!r} is not a detector: use {' or '.join(DETECTORS)}.")
    return value.strip().lower() if value is not None else None


DetectorOption = Annotated[
    Optional[str],
    typer.Option(
        "--detector",
        help="Face detector: yunet (libfacedetection's CNN, 6-8x cheaper; Linux x86-64) or hog (dlib's, "
        "face_recognition's own). Default: CONSENTMATCH_DETECTOR, else yunet where it runs, else hog.",
        callback=_detector_name,
        show_default=False,
    ),
]
ToleranceOption = Annotated[
    Optional[float],
    typer.Option(
        "--tolerance",
        "-t",
        min=0.0,
        max=2.0,
        help="Largest Euclidean distance counted as the same person; lower is stricter. "
        "Default: the gallery policy's (0.6).",
        show_default=False,
    ),
]


def error(message: str) -> None:
    """One line on stderr: no wrapping, no markup, no traceback, no raw control character."""
    print(f"error: {visible(' '.join(message.split()))}", file=sys.stderr, flush=True)


@contextmanager
def key_notice(g: Gallery, as_json: bool) -> Iterator[None]:
    """Say once, on stderr, where a call created the gallery key (silent with --json): losing
    it loses the gallery, so it must be backed up apart from it. Said even if the call then fails."""
    try:
        yield
    finally:
        if g.created_key_file is not None and not as_json:
            print(f"note: created the gallery key {visible(str(g.created_key_file))}: back it up apart from the gallery; "
                  "without it the gallery cannot be read.", file=sys.stderr, flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    error(message)
    raise typer.Exit(code)


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Library errors -> one line and exit 1; bad argument values -> exit 2, as usage errors."""
    try:
        yield
    except InvalidArgumentError as exc:
        fail(str(exc), 2)
    except ConsentMatchError as exc:
        fail(str(exc), 1)


def settings(detector: str | None = None) -> Settings:
    """The environment's settings: read here, at the CLI's entry, and passed down from here.

    `detector` is the command's --detector, which wins over CONSENTMATCH_DETECTOR.
    """
    return Settings.from_env().replace(detector=detector)


def open_gallery(path: str | Path, actor: str | None = None, detector: str | None = None, *,
                 existing: bool = False, photos: bool = False) -> Gallery:
    """The gallery at `path`. `existing`: the verb reads, changes or serves what is there, so a
    gallery that does not exist is an error (a mistyped path), never an empty gallery; only the
    verbs that create (enroll, import, consent grant, purpose add, policy set, optout add, apikey
    create) make a new one. `photos`: the verb reads photos, so the face models start loading
    now (`vision.preload`), while the gallery is imported and opened."""
    chosen = settings(detector)
    if photos:
        from ..vision import preload

        preload(chosen)
    from ..gallery import Gallery

    return Gallery(path, actor=actor, settings=chosen, existing=existing)


#: The longest word a column keeps whole when the terminal is narrow; a longer one (a hash, an
#: id) folds instead of taking the width of every other column.
LONGEST_WORD = 24
#: Words this short (a date, a count, a state, a role) are never split while the header words
#: and they can fit; longer ones (names, references) give way first, evenly.
SHORT_WORD = 10


class _Grid(Table):
    """A table that, when the terminal is too narrow for its widest lines, splits no header word
    and no short word (a date, a count, a state) while they can fit: the longest words give way
    first, evenly, and what width is left goes to the columns that need least first. Rich's own
    narrowing splits every column evenly ("Jurisdictio n", "2026-1 2-04"). Where the words
    cannot all stand side by side (nine columns in 80, or a name beside a reference), each row is
    printed as a record of "Header  value" lines instead (psql's expanded display): no word is
    cut, only one over LONGEST_WORD folds."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for column in self.columns:
            column.width = None
        headers = [Text.from_markup(c.header if isinstance(c.header, str) else "").plain.split() for c in self.columns]
        cells = [[w for cell in c.cells for w in Text.from_markup(cell if isinstance(cell, str) else "").plain.split()]
                 for c in self.columns]
        lines = [[line for cell in (c.header, *c.cells)
                  for line in Text.from_markup(cell if isinstance(cell, str) else "").plain.splitlines()]
                 for c in self.columns]
        widest = [max(map(cell_len, ls), default=1) for ls in lines]
        word = [min(LONGEST_WORD, max(map(cell_len, h + c), default=1)) for h, c in zip(headers, cells)]
        floor = [max([cell_len(w) for w in h] + [cell_len(w) for w in c if cell_len(w) <= SHORT_WORD], default=1)
                 for h, c in zip(headers, cells)]
        room = options.max_width - (len(self.columns) + 1) - 2 * len(self.columns)  # borders, padding
        if sum(widest) > room and sum(word) > room:  # some word would be cut: a record per row
            yield from self._records()
            return
        if sum(widest) > room:
            least = [max(w, f) for w, f in zip(word, floor)]
            while sum(least) > room:  # the longest words give way, one cell at a time
                i = max((i for i in range(len(least)) if least[i] > floor[i]), key=lambda i: least[i])
                least[i] -= 1
            widths, spare = list(least), room - sum(least)
            order = sorted(range(len(widths)), key=lambda i: widest[i] - least[i])
            for rank, i in enumerate(order):
                give = min(max(0, widest[i] - least[i]), spare // (len(order) - rank))
                widths[i] += give
                spare -= give
            for column, width in zip(self.columns, widths):
                column.width = width
        yield from super().__rich_console__(console, options)

    def _records(self) -> Iterator[RenderableType]:
        """Each row as a record: its column headers down the left, the values folded beside them."""
        if self.title:
            yield Text(str(self.title), style="italic")
        for row in range(self.row_count):
            record = Table.grid(padding=(0, 2))
            record.add_column(style="bold", no_wrap=True)
            record.add_column(overflow="fold")
            for column in self.columns:
                record.add_row(column.header, list(column.cells)[row])
            if row:
                yield Text("")
            yield record


def table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells fold instead of ending in "…": at 80 columns or piped, a path or a
    name is printed whole, over several lines if need be; short columns (a date, a count, a
    state) never break, so words are split only where a single word is wider than its column."""
    grid = _Grid(title=title)
    for column in columns:
        grid.add_column(column, overflow="fold")
    return grid


def print_json_lines(results: Iterable[Any]) -> None:
    """A listing as JSON Lines: each result's `to_dict()`, one per line."""
    for result in results:
        print_json(result.to_dict())


def print_requests(requests: list[SearchRequest], as_json: bool) -> None:
    """Search requests held for approval: a table, or JSON Lines."""
    if as_json:
        print_json_lines(requests)
        return
    grid = table("Request", "Status", "Kind", "Purpose", "Requester", "Case", "Reason", "Expires")
    for r in requests:
        grid.add_row(r.request_id, r.status, r.kind, r.purpose, _shown(r.requester), _shown(r.case_ref),
                     _shown(r.reason), day(r.expires_at))
    out.print(grid)


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False), flush=True)


def day(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d}" if moment else "-"


def consent_from(
    reference: str,
    purposes: list[str] | None,
    expires: str | None,
    jurisdiction: str | None,
    signer: str,
    evidence: Path | None,
    notice_version: str | None,
) -> Consent:
    from ..consent import Consent, evidence_digest, parse_expiry

    return Consent(
        reference=reference,
        purposes=tuple(purposes or ()),
        expires_at=parse_expiry(expires) if expires else None,
        jurisdiction=jurisdiction,
        signer=signer,
        evidence_sha256=evidence_digest(evidence) if evidence else None,
        notice_version=notice_version,
    )


def print_erasure(receipt: Erasure) -> None:
    """A receipt in plain words: a zero is said as what it means (nothing left to delete, a
    record kept as a tombstone, no index loaded in this process), not as a count that reads
    like a failure."""
    templates = f"{receipt.templates_removed} template(s) deleted" if receipt.templates_removed else "no template left to delete"
    consents = (
        f"{receipt.consents_removed} consent record(s) deleted"
        if receipt.consents_removed
        else "consent records kept as non-biometric tombstones"
    )
    if receipt.index_entries_removed or not receipt.templates_removed:
        index = f"{receipt.index_entries_removed} search index entries removed" if receipt.index_entries_removed else ""
    else:
        index = "the search index is rebuilt from the store at the next search"
    check = "post-check passed: none of them can be found" if receipt.verified else "[red]POST-CHECK FAILED[/red]"
    done = ", ".join(part for part in (templates, consents, index) if part)
    out.print(f"Erased '{_shown(receipt.subject)}' ({_shown(receipt.reason)}): {done}; {check}.")


def confirm(yes: bool, question: str, refused: str = "Nothing erased (not confirmed): pass --yes to erase without asking.") -> None:
    try:
        confirmed = yes or typer.confirm(question, err=True)
    except typer.Abort:  # no answer (stdin closed, Ctrl-C)
        confirmed = False
    if not confirmed:
        fail(refused)
