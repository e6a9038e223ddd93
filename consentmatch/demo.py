"""`consentmatch demo`: the main job, narrated, on the example photos in a throwaway gallery."""

from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from .errors import ConsentError, ManifestError
from .manifest import open_csv
from .text import shown

if TYPE_CHECKING:
    from .gallery import Gallery

__all__ = ["find_examples", "run"]

PURPOSE = "visitor-check-in"


def find_examples() -> Path:
    """The bundled examples: inside the installed package, or the source checkout's examples/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_examples", here.parent / "examples"):
        if (candidate / "consents.csv").is_file():
            return candidate
    raise ManifestError("The example photos are not installed: pass --examples DIR (a folder with consents.csv).")


def run(examples: Path | None, console: Console, *, as_json: bool = False) -> None:
    """Enroll with consent, refuse one without, match, forget, match again."""
    from .gallery import Gallery

    folder = examples or find_examples()
    expected = _expected(folder)
    probes = sorted(p for p in (folder / "probes").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    def say(text: str, **event: object) -> None:
        if as_json:
            print(json.dumps(event, ensure_ascii=False), flush=True)
        else:
            console.print(text)

    with tempfile.TemporaryDirectory(prefix="consentmatch-demo-") as tmp, Gallery(
        Path(tmp) / "demo.db", key=secrets.token_bytes(32), key_dir=Path(tmp) / "keys", actor="demo"
    ) as gallery:
        say(f"[b]1. Enroll with consent[/b] from {shown(folder / 'consents.csv')} into a throwaway gallery", step="start")
        report = gallery.import_manifest(folder / "consents.csv")
        for info in gallery.subjects():
            refs = ", ".join(c.reference for c in info.consents)
            say(
                f"   enrolled {shown(f'{info.subject:<15}')} {info.templates} photo(s), consent {shown(refs)}, "
                f"purposes {shown(', '.join(info.active_purposes))}",
                step="enrolled",
                **info.to_dict(),
            )
        for rejection in report.rejected:
            say(f"   [red]rejected[/red] row {rejection.row}: {shown(rejection.reason)}", step="rejected",
                **rejection.to_dict())

        stranger = folder / "probes" / "lin-manuel-miranda.png"
        say("\n[b]2. No consent, no enrollment[/b]", step="refuse")
        try:
            gallery.enroll("lin-manuel-miranda", [stranger], consent=None)
        except ConsentError as exc:
            say(f"   [yellow]refused:[/yellow] {shown(exc)}", step="refused", error=str(exc))

        say(f"\n[b]3. Match the probes[/b] for purpose '{PURPOSE}'", step="match")
        _match_all(gallery, probes, expected, console, as_json)

        say("\n[b]4. Purpose-bound search[/b]: 'staff-access' covers only biden and obama", step="purpose")
        _match_all(gallery, [folder / "probes" / "kit_with_rose.jpg"], {"kit_with_rose.jpg": []}, console, as_json,
                   "staff-access")

        say("\n[b]5. Forget obama[/b]", step="forget")
        receipt = gallery.forget("obama")
        say(
            f"   erased {receipt.templates_removed} template(s) and {receipt.consents_removed} consent record(s); "
            f"{receipt.index_entries_removed} index entries removed",
            step="forgot",
            **receipt.to_dict(),
        )

        say("\n[b]6. Match again[/b]: obama is no longer found", step="match-again")
        again = [p for p in probes if "obama" in p.name or p.name == "two_people.jpg"]
        forgotten = {name: [s for s in subjects if s != "obama"] for name, subjects in expected.items()}
        _match_all(gallery, again, forgotten, console, as_json)

        events = gallery.audit()
        check = gallery.verify_audit()
        actions = ", ".join(sorted({e.action for e in events}))
        say(
            f"\n[b]7. The audit trail[/b]: {len(events)} events ({actions}); hash chain "
            f"{'intact' if check.intact else 'BROKEN'}; no image, embedding or location in it",
            step="audit",
            **check.to_dict(),
        )
    say("\nDone: the throwaway gallery is deleted.", step="done")


def _match_all(
    gallery: Gallery,
    probes: list[Path],
    expected: dict[str, list[str]],
    console: Console,
    as_json: bool,
    purpose: str = PURPOSE,
) -> None:
    table = Table("Probe", "Faces", "Found", "Nearest", "Expected")
    for probe in probes:
        result = gallery.match(probe, purpose=purpose)
        if as_json:
            print(json.dumps({"step": "matched", **result.to_dict()}), flush=True)
            continue
        found = [f.subject for f in result.faces if f.subject]
        nearest = ", ".join(f"{f.candidates[0].subject} {f.candidates[0].distance:.2f}" for f in result.faces if f.candidates)
        want = expected.get(probe.name)
        mark = "" if want is None else ("[green]yes[/green]" if sorted(found) == want else f"[red]{shown(' '.join(want)) or 'nobody'}[/red]")
        table.add_row(shown(probe.name), str(len(result.faces)), shown(", ".join(found)) or "[dim]nobody[/dim]",
                      shown(nearest or "-"), mark)
    if not as_json:
        console.print(table)


def _expected(folder: Path) -> dict[str, list[str]]:
    path = folder / "expected.csv"
    if not path.is_file():
        return {}
    reader = open_csv(path, "Expected results", ("file", "subjects"), "file,subjects")
    return {Path(r["file"] or "").name: sorted((r["subjects"] or "").split()) for r in reader}
