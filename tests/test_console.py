"""The console end to end: Debian's Chromium (headless, driven by Playwright) against a real
`consentmatch serve` on a free loopback port, over a copy of the real example gallery.

Each test opens its own browser context (its own cookies) per person; the server and the browser
are shared by the module. Screenshots of each screen go to $CONSOLE_SCREENSHOTS when it is set
(the README's are made by `CONSOLE_SCREENSHOTS=docs/console uv run pytest tests/test_console.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from consentmatch import Gallery

from .conftest import EXAMPLES

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
#: The flags the issue names; Playwright talks to the browser over --remote-debugging-pipe.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
PROBES = EXAMPLES / "probes"
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 768, "height": 1024}


@dataclass
class Server:
    url: str
    keys: dict[str, str]
    gallery_path: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(_real_gallery_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("console") / "office.db"
    shutil.copyfile(_real_gallery_file, path)
    with Gallery(path, actor="setup") as gallery:
        gallery.set_policy("approval_purposes", "staff-access")
        gallery.declare_purpose("bank-transfer")  # declared; nobody has consented to it yet
        keys = {
            "desk": gallery.create_api_key("desk-3", roles=["operator"], purposes=["visitor-check-in"]).key,
            "teller": gallery.create_api_key("teller-1", roles=["operator"]).key,
            "officer": gallery.create_api_key("officer-12", roles=["operator"], purposes=["staff-access"]).key,
            "lieutenant": gallery.create_api_key("lt.jones", roles=["approver"]).key,
            "enroller": gallery.create_api_key("front-office", roles=["enroller"]).key,
            "auditor": gallery.create_api_key("privacy-officer", roles=["auditor"]).key,
            "admin": gallery.create_api_key("it-admin", roles=["admin"]).key,
        }
    port = _free_port()
    log = (path.parent / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "consentmatch", "serve", "-g", str(path), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/v1/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError((path.parent / "serve.log").read_text()) from None
                time.sleep(0.25)
        else:
            raise RuntimeError("consentmatch serve did not answer within 60 s")
        yield Server(url, keys, path)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI runs the console's browser tests: .ci/run installs Debian's chromium as root")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh profile for this session
    with playwright.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), ignore_default_args=True,
                                      args=[*FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"])
        yield chromium
        chromium.close()


class Desk:
    """One person at the console: a browser context of their own, signed in with their key."""

    def __init__(self, browser: object, server: Server, who: str, viewport: dict[str, int] = DESKTOP) -> None:
        self.context = browser.new_context(viewport=viewport, accept_downloads=True)  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.server, self.who = server, who
        self.page.set_default_timeout(20_000)
        self.page.goto(server.url + "/")

    def sign_in(self) -> None:
        self.page.get_by_label("API key").fill(self.server.keys[self.who])
        self.page.get_by_role("button", name="Sign in").click()
        self.ready()

    def ready(self) -> None:
        """Wait until the signed-in page has shown its screen. `#who` appears before the purposes
        load and the screen is chosen after them, so a test that reads a form at `#who` reads it
        half-built (CI once found the case fields of an approval purpose still folded)."""
        self.page.locator("#who").wait_for(state="visible")
        self.page.locator("#screens a[aria-current=page], #none:not([hidden])").first.wait_for()

    def go(self, screen: str) -> None:
        """Open `screen` and wait until it is shown: the switch happens on the hashchange that
        follows the click, so the old screen's fields are still the visible ones for a moment
        (CI once uploaded an Identify photo into Verify's field)."""
        link = self.page.get_by_role("link", name=screen)
        link.click()
        expect(link).to_have_attribute("aria-current", "page")

    def upload(self, label: str, *paths: Path) -> None:
        self.page.get_by_label(label, exact=True).filter(visible=True).set_input_files([str(p) for p in paths])

    def shot(self, name: str) -> None:
        folder = os.environ.get("CONSOLE_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            # the viewport grown to the whole page: a full-page shot would clip where a scrollbar was
            viewport = self.page.viewport_size
            assert viewport is not None
            height = self.page.evaluate("document.documentElement.scrollHeight")
            self.page.set_viewport_size({"width": viewport["width"], "height": max(height, viewport["height"])})
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"))
            self.page.set_viewport_size(viewport)

    def fetch(self, method: str, url: str, body: str | None = None, csrf: bool = True) -> dict[str, object]:
        """A request made by the page's own script, with its cookie: what a forged call would be."""
        return self.page.evaluate(
            """async ([method, url, body, csrf]) => {
                const token = (document.cookie.split('; ').find(c => c.startsWith('cm_csrf=')) || '=').split('=')[1];
                const headers = csrf ? {'X-CSRF-Token': token} : {};
                if (body !== null) headers['Content-Type'] = 'application/json';
                const r = await fetch(url, {method, headers, body: body === null ? undefined : body});
                return {status: r.status, body: await r.text()};
            }""", [method, url, body, csrf])

    def close(self) -> None:
        self.context.close()


def _visible_screens(desk: Desk) -> list[str]:
    return [t.strip() for t in desk.page.locator("#screens li:visible a").all_inner_texts()]


def test_each_role_signs_in_to_its_own_screens_and_signs_out(browser: object, server: Server) -> None:
    expected = {
        "desk": ["Identify", "Verify", "My requests"],
        "enroller": ["Enrollment"],
        "lieutenant": ["Approvals"],
        "auditor": ["Audit", "Subjects"],
        "admin": [],
    }
    for who, screens in expected.items():
        desk = Desk(browser, server, who)
        try:
            if who == "desk":  # by keyboard alone: type the key, Enter, Tab to a screen, Enter
                desk.shot("sign-in")
                desk.page.get_by_label("API key").focus()
                desk.page.keyboard.type(server.keys[who])
                desk.page.keyboard.press("Enter")
                desk.ready()
                for _ in range(10):
                    desk.page.keyboard.press("Tab")
                    if desk.page.evaluate("document.activeElement.textContent") == "Verify":
                        break
                desk.page.keyboard.press("Enter")
                desk.page.locator("#teller").wait_for(state="visible")
            else:
                desk.sign_in()
            assert _visible_screens(desk) == screens
            assert desk.page.locator("#none").is_visible() == (not screens)
            cookie = next(c for c in desk.context.cookies() if c["name"] == "cm_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            desk.page.reload()  # the session outlives a reload: no key kept in the page
            desk.ready()
            desk.page.get_by_role("button", name="Sign out").click()
            desk.page.get_by_label("API key").wait_for(state="visible")
            assert not [c for c in desk.context.cookies() if c["name"] == "cm_session"]
            assert desk.fetch("GET", "/v1/session")["status"] == 401
        finally:
            desk.close()
    wrong = Desk(browser, server, "desk")
    try:
        wrong.page.get_by_label("API key").fill(server.keys["desk"][:-3] + "AAA")
        wrong.page.get_by_role("button", name="Sign in").click()
        expect(wrong.page.get_by_role("alert")).to_contain_text("No valid API key")
    finally:
        wrong.close()


def test_enroll_with_consent_then_the_desk_names_the_visitor(browser: object, server: Server, tmp_path: Path) -> None:
    release = tmp_path / "FORM-90-signed.pdf"
    release.write_bytes(b"%PDF-1.4 signed release of Lin, 2026-11-28\n")
    enroller = Desk(browser, server, "enroller")
    try:
        enroller.sign_in()
        page = enroller.page
        page.get_by_label("Subject id", exact=True).first.fill("lin")
        page.get_by_label("Consent reference (the signed form's number)").fill("FORM-90")
        page.get_by_label("visitor-check-in").check()
        page.get_by_label("Expires (optional)").fill("2030-01-01")
        page.get_by_label("Jurisdiction (optional, e.g. US-IL)").fill("US-NY")
        enroller.upload("Signed release (optional: only its SHA-256 is sent)", release)
        page.get_by_role("button", name="Record the consent").click()
        expect(page.locator("#consent-result")).to_contain_text("Consent FORM-90 recorded for lin")
        recorded = page.locator("#consent-result").inner_text()
        assert hashlib.sha256(release.read_bytes()).hexdigest() in recorded  # hashed in the browser
        enroller.upload("Photos (one face each, up to 20)", PROBES / "lin-manuel-miranda.png")
        page.get_by_role("button", name="Enroll", exact=True).click()
        expect(page.locator("#photos-result")).to_contain_text("lin: 1 template(s) added")
        enroller.shot("enrollment")
    finally:
        enroller.close()

    desk = Desk(browser, server, "desk")
    try:
        desk.sign_in()
        page = desk.page
        expect(page.locator("#desk-purpose option")).to_have_text(["visitor-check-in"])  # the key's only (waits for the list)
        desk.upload("Photo", PROBES / "obama_and_biden.jpg")
        page.get_by_role("button", name="Check the photo").click()
        faces = page.locator("#desk-result li.face")
        faces.first.wait_for()
        texts = faces.all_inner_texts()
        assert sorted(t.split(",")[0].split(":")[0] + t.split(",")[0].split(":")[1] for t in texts) == \
            ["Match biden", "Match obama", "No match nobody enrolled for visitor-check-in is within the tolerance (0.60)."]
        assert all("tolerance" in t and "0.60" in t for t in texts)
        assert page.locator("#desk-result canvas").count() == 1
        desk.shot("visitor-desk")
        desk.upload("Photo", PROBES / "lin-manuel-miranda.png")
        page.get_by_role("button", name="Check the photo").click()
        page.get_by_text("Match: lin,").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    finally:
        desk.close()
    tablet = Desk(browser, server, "desk", viewport=TABLET)
    try:
        tablet.sign_in()
        tablet.upload("Photo", PROBES / "obama1.jpg")
        tablet.page.get_by_role("button", name="Check the photo").click()
        tablet.page.get_by_text("Match: obama,").wait_for()
        assert tablet.page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")  # no sideways scroll
        tablet.shot("visitor-desk-tablet")
    finally:
        tablet.close()


def test_teller_check_and_its_refusal(browser: object, server: Server) -> None:
    teller = Desk(browser, server, "teller")
    try:
        teller.sign_in()
        teller.go("Verify")
        page = teller.page
        page.locator("#teller-form").get_by_role("button", name="Use the camera").click()
        expect(page.get_by_role("alert")).to_contain_text("upload a photo instead")  # headless: no camera
        page.get_by_label("Person (subject id)").fill("obama")
        page.locator("#teller-purpose").select_option("visitor-check-in")
        teller.upload("Photo", PROBES / "obama1.jpg")
        page.get_by_role("button", name="Verify").click()
        page.get_by_text("Match: this is obama").wait_for()
        expect(page.locator("#teller-result")).to_contain_text("(tolerance 0.60)")
        teller.shot("teller-check")
        page.get_by_label("Person (subject id)").fill("kit_harington")
        page.locator("#teller-purpose").select_option("bank-transfer")  # kit never consented to it
        page.get_by_role("button", name="Verify").click()
        # issue 24: no consent for the purpose is answered as a non-match, never "not enrolled"
        page.get_by_text("No match: this is not kit_harington").wait_for()
        expect(page.locator("#teller-result")).to_contain_text("beyond the tolerance (0.60)")
    finally:
        teller.close()


def test_bulk_upload_reports_each_row(browser: object, server: Server, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("subject,photo,consent_ref,purposes,expires,jurisdiction,evidence\n"
                        "obama,probes/obama1.jpg,BULK-1,visitor-check-in,2030-01-01,US-IL,releases/REL-2026-0004.txt\n"
                        "rose_leslie,people/rose_leslie/img2.jpg,REL-2026-0005,visitor-check-in,2030-01-01,GB,\n"
                        "kit_harington,probes/kit_with_rose.jpg,REL-2026-0003,visitor-check-in,,GB,\n"
                        "nobody,photos/missing.jpg,BULK-2,visitor-check-in,,,\n")
    enroller = Desk(browser, server, "enroller")
    try:
        enroller.sign_in()
        enroller.upload("Manifest (CSV)", manifest)
        enroller.upload("Photos and evidence files", PROBES / "obama1.jpg", EXAMPLES / "people/rose_leslie/img2.jpg",
                        PROBES / "kit_with_rose.jpg", EXAMPLES / "releases/REL-2026-0004.txt")
        enroller.page.get_by_role("button", name="Upload").click()
        enroller.page.get_by_text("Bulk upload done").wait_for()
        rows = [r.split("\t") for r in enroller.page.locator("#bulk-table tbody tr").all_inner_texts()]
        outcomes = {row[1]: row[3] for row in rows}
        assert outcomes["obama"] == "enrolled"
        assert outcomes["rose_leslie"] == "already enrolled"
        assert "face" in outcomes["kit_harington"].lower()  # two faces: refused, the other rows go in
        assert "missing.jpg was not among the files chosen" in outcomes["nobody"]
        assert enroller.page.locator("#bulk-progress").evaluate("p => p.value === p.max")
        enroller.shot("bulk-upload")
    finally:
        enroller.close()


def _bulk_outcomes(desk: Desk) -> dict[str, str]:
    """The bulk table's outcome of each row, by the photo path the manifest gives."""
    rows = [r.split("\t") for r in desk.page.locator("#bulk-table tbody tr").all_inner_texts()]
    return {row[2]: row[3] for row in rows}


def test_bulk_upload_matches_photos_by_their_folder_and_refuses_a_guess(browser: object, server: Server) -> None:
    """Issue 24 item 1: the examples' manifest and every photo of examples/people/*/*. Two files are
    called img1.jpg (alex_lacamoire's and rose_leslie's): chosen without their folders, neither row
    may take either; chosen as a folder, each row gets its own photo (already enrolled, same SHA-256)."""
    people = sorted((EXAMPLES / "people").glob("*/*"))
    assert [p.name for p in people].count("img1.jpg") == 2
    enroller = Desk(browser, server, "enroller")
    try:
        enroller.sign_in()
        page = enroller.page
        enroller.upload("Manifest (CSV)", EXAMPLES / "consents.csv")
        enroller.upload("Photos and evidence files", *people, EXAMPLES / "releases/REL-2026-0004.txt")
        page.get_by_role("button", name="Upload").click()
        page.get_by_text("Bulk upload done").wait_for()
        outcomes = _bulk_outcomes(enroller)
        for path in ("people/alex_lacamoire/img1.jpg", "people/rose_leslie/img1.jpg"):
            assert f"{path} is ambiguous: 2 files chosen could be it" in outcomes.pop(path)
            assert "folder" in outcomes.get(path, "folder")
        assert set(outcomes.values()) == {"already enrolled"}, outcomes  # the other seven rows: their own photos
        expect(page.locator("#status")).to_have_text("Bulk upload done: 7 of 9 row(s) enrolled.")

        enroller.upload("Photos and evidence files")  # none: the folder instead, each file with its path
        page.locator("#bulk-folder").set_input_files(str(EXAMPLES))
        assert page.locator("#bulk-folder").evaluate("i => i.files[0].webkitRelativePath.startsWith('examples/')")
        page.get_by_role("button", name="Upload").click()
        page.get_by_text("Bulk upload done: 9 of 9 row(s) enrolled.").wait_for(timeout=60_000)
        outcomes = _bulk_outcomes(enroller)
        assert len(outcomes) == 9 and set(outcomes.values()) == {"already enrolled"}, outcomes
    finally:
        enroller.close()


def test_manifest_paths_find_their_files_folder_by_folder(browser: object) -> None:
    """The console's matcher (console.js `matchFiles`) on its own, in the browser: no server."""
    context = browser.new_context()  # type: ignore[attr-defined]
    try:
        page = context.new_page()
        page.set_content("<!doctype html><title>matcher</title>")
        page.add_script_tag(path=str(Path(__file__).parents[1] / "consentmatch/service/static/console.js"))

        def found(paths: list[str], files: list[str]) -> dict[str, str]:
            return page.evaluate("""([paths, files]) => {
                const chosen = files.map((f) => f.includes('/') ? {name: f.split('/').pop(), webkitRelativePath: f}
                                                                 : {name: f, webkitRelativePath: ''});
                return Object.fromEntries([...matchFiles(paths, chosen)].map(([path, m]) =>
                    [path, m.error ? `error: ${m.error}` : (m.file.webkitRelativePath || m.file.name)]));
            }""", [paths, files])

        two = ["people/a/img1.jpg", "people/b/img1.jpg"]
        by_name = found([*two, "people/b/img2.jpg"], ["img1.jpg", "img1.jpg", "img2.jpg"])
        assert by_name["people/b/img2.jpg"] == "img2.jpg"  # one file of that name: no guess involved
        assert all(by_name[p].startswith(f"error: {p} is ambiguous: 2 files chosen could be it") for p in two)
        one = found(two, ["img1.jpg"])  # one file, two rows it could be
        assert one["people/a/img1.jpg"].startswith("error: people/a/img1.jpg is ambiguous: the file chosen, "
                                                   "img1.jpg, could also be people/b/img1.jpg")
        assert one["people/b/img1.jpg"].startswith("error: people/b/img1.jpg is ambiguous")
        folder = ["shoot/people/a/img1.jpg", "shoot/people/b/img1.jpg", "shoot/probes/img1.jpg"]
        assert found([*two, "./people/a/img1.jpg", "people\\b\\img1.jpg", "../shoot/people/b/img1.jpg"], folder) == {
            "people/a/img1.jpg": "shoot/people/a/img1.jpg", "people/b/img1.jpg": "shoot/people/b/img1.jpg",
            "./people/a/img1.jpg": "shoot/people/a/img1.jpg", "people\\b\\img1.jpg": "shoot/people/b/img1.jpg",
            "../shoot/people/b/img1.jpg": "shoot/people/b/img1.jpg"}
        assert found(["img1.jpg"], folder)["img1.jpg"].startswith("error: img1.jpg is ambiguous: 3 files")
        assert found(["people/c/img1.jpg"], folder) == {"people/c/img1.jpg": "error: people/c/img1.jpg was not "
                                                                             "among the files chosen"}
    finally:
        context.close()


def test_an_officers_request_is_approved_by_another_key_and_the_result_shown(browser: object, server: Server) -> None:
    officer = Desk(browser, server, "officer")
    lieutenant = Desk(browser, server, "lieutenant")
    try:
        officer.sign_in()
        page = officer.page
        expect(page.locator("#desk-purpose option")).to_have_text(["staff-access"])
        officer.upload("Photo", PROBES / "obama1.jpg")
        assert page.locator("#desk-form details").evaluate("d => d.open")  # staff-access needs approval: open
        page.get_by_label("Case reference").first.fill("CASE-24-118")
        page.get_by_label("Reason").first.fill("badge misuse report")
        page.get_by_role("button", name="Check the photo").click()
        page.get_by_text("waits for an approver").wait_for()
        request_id = page.locator("#desk-result").inner_text().split()[2]
        assert request_id.startswith("req_")

        lieutenant.sign_in()
        queue = lieutenant.page.locator("#approvals-table tbody tr", has_text=request_id)
        queue.wait_for()
        row = queue.inner_text()
        assert "CASE-24-118" in row and "officer-12" in row and "badge misuse report" in row
        queue.get_by_role("button", name="Review").click()
        probe = lieutenant.page.locator("#decide-probe")
        probe.wait_for()
        lieutenant.page.wait_for_function("document.getElementById('decide-probe').naturalWidth > 0")
        lieutenant.shot("approvals")
        lieutenant.page.get_by_label("Your reason").fill("case reviewed")
        lieutenant.page.get_by_role("button", name="Approve").click()
        expect(lieutenant.page.locator("#decide-result")).to_contain_text("approved")

        officer.go("My requests")
        mine = page.locator("#mine-table tbody tr", has_text=request_id)
        mine.wait_for()
        assert "approved" in mine.inner_text() and "lt.jones" in mine.inner_text()
        assert mine.locator(".request-result").inner_text() == "obama"
        officer.shot("my-requests")
    finally:
        officer.close()
        lieutenant.close()


def test_audit_search_chain_status_export_and_retention(browser: object, server: Server) -> None:
    auditor = Desk(browser, server, "auditor")
    try:
        auditor.sign_in()
        page = auditor.page
        page.get_by_text("Audit chain intact").wait_for()
        page.get_by_label("Action").fill("apikey-create")
        page.get_by_role("button", name="Search").click()
        page.get_by_text("7 event(s) shown.").wait_for()
        actions = page.locator("#audit-table tbody tr td:nth-child(4)").all_inner_texts()
        assert actions == ["apikey-create"] * 7
        page.get_by_label("Action").fill("")
        page.locator("#audit-purpose").fill("staff-access")  # the approved search's trail
        page.get_by_role("button", name="Search").click()
        expect(page.locator("#audit-table tbody")).to_contain_text("request-approve")
        assert set(page.locator("#audit-table tbody tr td:nth-child(6)").all_inner_texts()) == {"staff-access"}
        auditor.shot("audit")
        auditor.go("Subjects")
        row = page.locator("#subjects-table tbody tr", has_text="obama")
        row.wait_for()
        with page.expect_download() as downloaded:
            row.get_by_role("button").click()
        export = json.loads(Path(downloaded.value.path()).read_text())
        assert export["subject"] == "obama" and "embedding" not in json.dumps(export)
        # the schedule loads after the subjects: awaited, not read at once
        expect(page.locator("#retention-table tbody tr", has_text="rose_leslie")).to_have_count(1)
        auditor.shot("subjects")
    finally:
        auditor.close()


def test_a_role_without_the_right_sees_no_screen_and_a_forged_call_is_refused(browser: object, server: Server) -> None:
    auditor = Desk(browser, server, "auditor")
    try:
        auditor.sign_in()
        assert "Identify" not in _visible_screens(auditor)
        auditor.page.goto(server.url + "/#desk")  # typed by hand: the page still does not show it
        auditor.ready()
        assert not auditor.page.locator("#desk").is_visible() and auditor.page.locator("#audit").is_visible()
        forged = auditor.fetch("POST", "/v1/requests/req_0000000000000000/approve", json.dumps({"reason": "x"}))
        assert forged["status"] == 403 and "lacks the role" in str(forged["body"])
        no_token = auditor.fetch("POST", "/v1/consents", json.dumps(
            {"subject": "mallory", "reference": "F-1", "purposes": ["visitor-check-in"]}), csrf=False)
        assert no_token["status"] == 403 and "CSRF" in str(no_token["body"])
    finally:
        auditor.close()
    desk = Desk(browser, server, "desk")
    try:
        desk.sign_in()
        assert "Audit" not in _visible_screens(desk)
        forged = desk.fetch("GET", "/v1/audit")
        assert forged["status"] == 403
    finally:
        desk.close()


def test_a_new_check_clears_the_last_result_and_an_ended_session_reads_plain_words(
    browser: object, server: Server,
) -> None:
    """Issue 24 item 15: a failed check left the last visitor's green Match on screen; an ended
    session said "send 'Authorization: Bearer <key>'"."""
    desk = Desk(browser, server, "desk")
    try:
        desk.sign_in()
        page = desk.page
        desk.upload("Photo", PROBES / "obama1.jpg")
        page.get_by_role("button", name="Check the photo").click()
        page.get_by_text("Match: obama,").wait_for()
        desk.upload("Photo", EXAMPLES / "releases/REL-2026-0004.txt")  # the wrong file: refused
        page.get_by_role("button", name="Check the photo").click()
        expect(page.get_by_role("alert")).to_contain_text("is not a supported image")
        assert page.locator("#desk-result").inner_text() == ""  # no green Match beside the refusal
        expect(page.get_by_role("alert")).to_contain_text("'REL-2026-0004.txt' is not a supported image")

        desk.upload("Photo", PROBES / "obama1.jpg")
        page.get_by_role("button", name="Check the photo").click()
        page.get_by_text("Match: obama,").wait_for()
        expect(page.locator("#desk-result")).to_contain_text("1 face(s) found in obama1.jpg")
        desk.upload("Photo")  # no photo chosen now
        page.get_by_role("button", name="Check the photo").click()
        expect(page.get_by_role("alert")).to_contain_text("Choose a photo")
        assert page.locator("#desk-result").inner_text() == ""

        desk.context.clear_cookies()  # the session is gone (as after the idle timeout)
        desk.upload("Photo", PROBES / "obama1.jpg")
        page.get_by_role("button", name="Check the photo").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("Your session has ended")
        assert "Authorization" not in alert.inner_text() and "Bearer" not in alert.inner_text()
        page.get_by_label("API key").wait_for(state="visible")
    finally:
        desk.close()


def test_the_console_shows_when_the_session_ends_at_the_latest(browser: object, server: Server) -> None:
    """The sign-in said "ends at <now + 30 min> at the latest": that is the idle deadline, which
    each request moves; the latest end is the sign-in plus 8 hours."""
    desk = Desk(browser, server, "desk")
    try:
        desk.sign_in()
        page = desk.page
        answer = json.loads(str(desk.fetch("GET", "/v1/session")["body"]))
        ends = datetime.fromisoformat(answer["ends_by"])
        assert abs((ends - datetime.now(timezone.utc)) - timedelta(hours=8)) < timedelta(minutes=5)
        assert answer["idle_timeout_s"] == 1800
        assert datetime.fromisoformat(answer["expires_at"]) - datetime.now(timezone.utc) > timedelta(minutes=29)
        shown = page.evaluate("t => new Date(t).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})",
                              ends.isoformat())
        expect(page.locator("#status")).to_contain_text(f"Signed in until {shown} at the latest; 30 minutes "
                                                        "without use also signs you out")
        page.reload()  # the header keeps saying it
        expect(page.locator("#who")).to_contain_text(f"until {shown} at the latest")
    finally:
        desk.close()


def test_enrollment_refusals_read_plain_words(browser: object, server: Server) -> None:
    """A second name for an enrolled face: the API's "pass allow_duplicate=True (--allow-duplicate)"
    is for developers; the desk is told to ask an administrator."""
    enroller = Desk(browser, server, "enroller")
    try:
        enroller.sign_in()
        page = enroller.page
        page.get_by_label("Subject id", exact=True).first.fill("barack-2")
        page.get_by_label("Consent reference (the signed form's number)").fill("FORM-DUP-1")
        page.get_by_label("visitor-check-in").check()
        page.get_by_role("button", name="Record the consent").click()
        expect(page.locator("#consent-result")).to_contain_text("Consent FORM-DUP-1 recorded for barack-2")
        enroller.upload("Photos (one face each, up to 20)", PROBES / "obama1.jpg")
        page.get_by_role("button", name="Enroll", exact=True).click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("'obama1.jpg' shows enrolled subject 'obama'")
        expect(alert).to_contain_text("one person may not be enrolled under two names. If they are twins, or this "
                                      "is intended, ask your administrator.")
        assert "allow" not in alert.inner_text() and "--" not in alert.inner_text()
    finally:
        enroller.close()


def test_screens_are_neutral_and_an_approval_purpose_opens_its_case_fields(browser: object, server: Server) -> None:
    officer = Desk(browser, server, "officer")
    desk = Desk(browser, server, "desk")
    try:
        officer.sign_in()
        page = officer.page
        assert _visible_screens(officer) == ["Identify", "Verify", "My requests"]
        for screen, form in (("Identify", "#desk-form"), ("Verify", "#teller-form")):
            officer.go(screen)
            details = page.locator(f"{form} details")
            expect(details).to_have_js_property("open", True)  # staff-access needs approval
            expect(details.locator(".needs-approval")).to_be_visible()
            expect(page.locator(form).get_by_label("Case reference")).to_be_visible()
        officer.go("Identify")
        officer.upload("Photo", PROBES / "obama1.jpg")
        page.get_by_role("button", name="Check the photo").click()  # no case reference: refused, plainly
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("This purpose needs an approver's decision: fill in the case reference")
        assert "CLI" not in alert.inner_text() and "--case-ref" not in alert.inner_text()

        desk.sign_in()  # visitor-check-in needs none: the fields stay folded away
        assert not desk.page.locator("#desk-form details").evaluate("d => d.open")
        assert not desk.page.locator("#desk-form .needs-approval").is_visible()
        text = desk.page.locator("body").inner_text()
        assert "Teller" not in text and "Visitor desk" not in text and "Customer" not in text
    finally:
        officer.close()
        desk.close()
