"""Many machines, one gallery: the PostgreSQL store against a real server (tests/pg.py).

The contract tests of test_gallery.py and test_compliance.py run on both stores; here is what
only a shared server has: several processes (each its own index) on one database, an erasure
reaching every node, a writer killed mid-import, the server restarted mid-run, what a dump
holds, where the keys live, and tampering by SQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from consentmatch import Consent, Gallery, StorageError, TamperingError
from consentmatch.cli import app
from consentmatch.services import access, approvals

from .conftest import PURPOSE, ROOT, FakeEncoder, fake_encoding, fake_photo
from .pg import Cluster

#: A node: a process with its own Gallery (its own index) on the shared database. Writers enroll
#: their people and forget every other one; matchers search everyone until told to stop. Each
#: prints one JSON line per step, with the wall-clock times around it (one machine: one clock).
NODE = '''
import json, sys, time
from pathlib import Path
from consentmatch import Consent, ConsentMatchError, Gallery
from tests.conftest import FakeEncoder, fake_photo

role, url, folder, node, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
gallery = Gallery(url, encoder=FakeEncoder(), actor=f"node-{node}")
say = lambda **event: print(json.dumps(event), flush=True)
if role == "writer":
    for i in range(count):
        person = node * count + i + 1
        photo = fake_photo(folder, f"n{node}-{i}.png", (person, 0))
        gallery.enroll(f"p{person}", [photo], Consent(f"R{person}", ["visitor-check-in"]))
        say(event="enrolled", subject=f"p{person}", t=time.time())
        if i % 2:
            gallery.forget(f"p{person - 1}")
            say(event="forgot", subject=f"p{person - 1}", t=time.time())
else:
    probes = {p: fake_photo(folder, f"probe-{node}-{p}.png", (p, 3)) for p in range(1, count + 1)}
    stop = folder / "stop"
    while not stop.exists():
        for person, probe in probes.items():
            start = time.time()
            try:
                (face,) = gallery.match(probe, purpose="visitor-check-in").faces
            except ConsentMatchError as exc:  # before the first enrollment: no gallery, no purpose yet
                say(event="refused", error=type(exc).__name__, t=start)
                time.sleep(0.05)
                continue
            say(event="matched", probe=f"p{person}", subject=face.subject, t=start)
gallery.close()
'''


def _node(script: Path, *args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _events(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_nodes_enroll_forget_and_match_at_once_and_no_erasure_is_matched_after_it(pg_url: str, tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE)
    per_writer = 4
    writers = [_node(script, "writer", pg_url, tmp_path, node, per_writer) for node in range(2)]
    matchers = [_node(script, "matcher", pg_url, tmp_path, 10 + node, 2 * per_writer) for node in range(2)]
    written = [w.communicate(timeout=120) for w in writers]
    time.sleep(1.0)  # the matchers keep searching after the last erasure
    (tmp_path / "stop").touch()
    searched = [m.communicate(timeout=120) for m in matchers]
    for process, (_, err) in zip(writers + matchers, written + searched):
        assert process.returncode == 0, err
    forgotten = {str(e["subject"]): float(e["t"]) for out, _ in written for e in _events(out) if e["event"] == "forgot"}
    matches = [e for out, _ in searched for e in _events(out) if e["event"] == "matched"]
    assert len(forgotten) == per_writer and len(matches) > 20
    late = [e for e in matches if e["subject"] in forgotten and float(e["t"]) > forgotten[str(e["subject"])]]
    assert late == []  # a search that started after an erasure returned never finds the erased subject
    found = {str(e["subject"]) for e in matches if e["subject"]}
    assert found - set(forgotten)  # the matchers did see the other nodes' enrollments
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        kept = sorted(s.subject for s in gallery.subjects())
        assert kept == sorted(f"p{p}" for p in range(1, 2 * per_writer + 1) if f"p{p}" not in forgotten)
        check = gallery.verify_audit()
        assert check.intact and check.problem is None  # one chain, from four writers' and searchers' events
        assert len([e for e in gallery.audit() if e.action == "enroll"]) == 2 * per_writer


def test_an_erasure_on_one_node_leaves_the_index_of_another_within_a_second(pg_url: str, tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(pg_url, encoder=FakeEncoder()) as one, Gallery(pg_url, encoder=FakeEncoder()) as other:
        one.enroll("alice", [photo], Consent("R1", [PURPOSE]))
        one.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", [PURPOSE]))
        assert other.match(photo, purpose=PURPOSE).faces[0].subject == "alice"  # its own index, built now
        index = other._ctx.cache.live
        assert index is not None and len(index) == 2
        one.forget("alice")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and len(index) != 1:  # no search: the NOTIFY alone moves it
            time.sleep(0.02)
        assert len(index) == 1 and other._ctx.cache.live is index  # caught up in place, not rebuilt
        assert other.match(photo, purpose=PURPOSE).faces[0].candidates[0].subject == "bob"


def test_a_writer_killed_mid_import_leaves_nothing_half_written(pg_url: str, tmp_path: Path) -> None:
    rows = []
    for person in range(1, 31):
        for variant in range(2):
            rows.append(f"p{person},{fake_photo(tmp_path, f'p{person}-{variant}.png', (person, variant)).name},R{person},{PURPOSE}")
    manifest = tmp_path / "people.csv"
    manifest.write_text("subject,photo,consent_ref,purposes\n" + "\n".join(rows) + "\n")
    script = tmp_path / "importer.py"
    script.write_text(textwrap.dedent('''
        import sys
        from consentmatch import Gallery
        from tests.conftest import FakeEncoder
        with Gallery(sys.argv[1], encoder=FakeEncoder()) as gallery:
            gallery.import_manifest(sys.argv[2], progress=lambda done, total: print(done, flush=True))
    '''))
    child = _node(script, pg_url, manifest)
    assert child.stdout is not None
    while int(child.stdout.readline() or 0) < 20:  # well into the import
        pass
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        subjects = {s.subject: s.templates for s in gallery.subjects()}
        assert 5 < len(subjects) < 30
        enrolled = {}
        for event in gallery.audit():
            if event.action == "enroll":
                enrolled[event.subject] = enrolled.get(event.subject, 0) + int(event.details["templates_added"])
        assert {s: n for s, n in subjects.items() if n} == enrolled  # every template its audit event, and no other
        check = gallery.verify_audit()
        assert check.intact and check.problem is None
        for person in (1, 2):  # what was committed is found
            (face,) = gallery.match(tmp_path / f"p{person}-0.png", purpose=PURPOSE).faces
            assert face.subject == f"p{person}"
        # the import, run again, finishes the rest: nothing the killed one left stands in its way
        report = gallery.import_manifest(manifest)
        assert not report.rejected, report.rejected
        assert sum(s.templates for s in gallery.subjects()) == 60


def test_a_restarted_server_gives_one_line_errors_then_recovers(
    pg_cluster: Cluster, pg_url: str, tmp_path: Path
) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    gallery = Gallery(pg_url, encoder=FakeEncoder())
    try:
        gallery.enroll("alice", [photo], Consent("R1", [PURPOSE]))
        pg_cluster.stop()
        try:
            with pytest.raises(StorageError, match="the database is unreachable") as caught:
                gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", [PURPOSE]))
            assert "\n" not in str(caught.value) and "nothing was changed" in str(caught.value)
            result = CliRunner().invoke(app, ["subjects", "-g", pg_url])
            assert result.exit_code == 1 and "unreachable" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        finally:
            pg_cluster.start()
        # the same Gallery object, its pool and its key store connection, recover by themselves
        gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", [PURPOSE]))
        assert sorted(s.subject for s in gallery.subjects()) == ["alice", "bob"]
        assert gallery.match(photo, purpose=PURPOSE).faces[0].subject == "alice"
        assert gallery.verify_audit().intact
    finally:
        gallery.close()


def test_an_unreachable_server_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"postgresql:///nothing?host={tmp_path}&port=1"
    result = CliRunner().invoke(app, ["subjects", "-g", url])
    assert result.exit_code == 1 and result.stderr.startswith("error: Gallery 'postgresql:///nothing")
    assert "unreachable" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bad = CliRunner().invoke(app, ["subjects", "-g", "postgresql://desk:secret@db.internal/visitors?bogus=1"])
    assert bad.exit_code == 1 and "is not a PostgreSQL URL libpq reads" in bad.stderr
    assert "secret" not in bad.stderr and "desk:***@" in bad.stderr  # never a password


def test_a_dump_holds_no_window_of_any_template(pg_cluster: Cluster, pg_url: str, tmp_path: Path) -> None:
    people = range(10, 16)
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        for person in people:
            photos = [fake_photo(tmp_path, f"p{person}-{v}.png", (person, v)) for v in (0, 1)]
            gallery.enroll(f"p{person}", photos, Consent(f"R{person}", [PURPOSE]))
        gallery.forget("p10")
    database = pg_url.split("?")[0].rsplit("/", 1)[1]
    dumps = {name: pg_cluster.dump(name) for name in (database, f"{database}_keys")}
    assert b"CREATE TABLE public.templates" in dumps[database] and b"p11" in dumps[database]
    for person in people:
        for variant in (0, 1):
            vector = fake_encoding(person, variant)
            for dtype, step in ((np.float32, 4), (np.float16, 2)):
                raw = vector.astype(dtype).tobytes()
                windows = {raw[i:i + 4 * step] for i in range(0, len(raw) - 4 * step + 1, step)}
                for dump in dumps.values():
                    assert not any(w in dump or w.hex().encode() in dump for w in windows), (person, variant, dtype)


def test_the_keys_live_in_their_own_database_and_an_erasure_shreds_them(
    pg_cluster: Cluster, pg_url: str, tmp_path: Path
) -> None:
    database = pg_url.split("?")[0].rsplit("/", 1)[1]
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
        gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", [PURPOSE]))
        subject_keys = "SELECT count(*) FROM deks WHERE key_id NOT LIKE 'index-%' AND key_id NOT LIKE 'mac-%'"
        assert pg_cluster.psql(f"{database}_keys", subject_keys).strip() == "2"
        assert pg_cluster.psql(database, "SELECT to_regclass('deks') IS NULL").strip() == "t"  # none in the gallery
        gallery.forget("alice")
        assert pg_cluster.psql(f"{database}_keys", subject_keys).strip() == "1"
        info = gallery.key_info().to_dict()
        assert info["data_keys"] == 1 and info["key_dir"] == f"PostgreSQL database {database}_keys"


def test_rows_edited_by_sql_are_refused_and_the_audit_trail_is_append_only(
    pg_cluster: Cluster, pg_url: str, tmp_path: Path
) -> None:
    database = pg_url.split("?")[0].rsplit("/", 1)[1]
    alice = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [alice], Consent("R1", [PURPOSE]))
        gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", ["payroll"]))
    with pytest.raises(subprocess.CalledProcessError):
        pg_cluster.psql(database, "DELETE FROM audit")
    pg_cluster.psql(database, "INSERT INTO consent_purposes (consent_id, purpose) SELECT id, 'payroll' FROM consents WHERE reference = 'R1'")
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        with pytest.raises(TamperingError, match="the consent record 'R1'"):
            gallery.match(alice, purpose="payroll")
        check = gallery.verify_audit()
        assert not check.intact and "R1" in (check.problem or "")
    pg_cluster.psql(database, "DELETE FROM consent_purposes WHERE consent_id = (SELECT id FROM consents WHERE reference = 'R1') AND purpose = 'payroll'")
    pg_cluster.psql(database, "UPDATE subjects SET name = 'mallory' WHERE name = 'alice'")
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        with pytest.raises(TamperingError):
            gallery.match(alice, purpose=PURPOSE)


def test_nodes_creating_one_gallery_at_once_make_one_schema(pg_url: str, tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE)
    writers = [_node(script, "writer", pg_url, tmp_path, node, 1) for node in range(4)]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        assert sorted(s.subject for s in gallery.subjects()) == ["p1", "p2", "p3", "p4"]
        assert gallery.verify_audit().intact


def test_a_database_with_other_tables_is_refused(pg_cluster: Cluster, pg_url: str, tmp_path: Path) -> None:
    database = pg_url.split("?")[0].rsplit("/", 1)[1]
    pg_cluster.psql(database, "CREATE TABLE invoices (id integer)")
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        with pytest.raises(StorageError, match="holds tables but no consentmatch gallery"):
            gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
    assert pg_cluster.psql(database, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").strip() == "1"


def test_the_service_rows_on_both_stores(store_gallery: Gallery, tmp_path: Path) -> None:
    """API keys and requests held for approval (the service's rows) behave alike on both stores."""
    gallery = store_gallery
    gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE, "staff-access"]))
    desk = gallery.create_api_key("desk-1", roles=["operator"], purposes=[PURPOSE])
    gallery.create_api_key("chief-1", roles=["approver"])
    assert access.authenticate(gallery.context, desk.key).name == "desk-1"
    assert [k.name for k in gallery.api_keys()] == ["chief-1", "desk-1"]
    gallery.set_policy("approval_purposes", "staff-access")
    held = gallery.request_match(fake_photo(tmp_path, "p.png", (10, 2)), purpose="staff-access", case_ref="C-1",
                                 reason="badge lost", actor="desk-1")
    assert held.status == "pending" and approvals.request_probe(gallery.context, held.request_id)
    decided = gallery.approve_request(held.request_id, reason="ok", actor="chief-1")
    assert decided.status == "approved"
    result = gallery.search_request(held.request_id, actor="desk-1").result
    assert result is not None and result["faces"][0]["subject"] == "alice"
    assert gallery.revoke_api_key("desk-1") and not gallery.revoke_api_key("desk-1")
    check = gallery.verify_audit()
    assert check.intact and check.problem is None


def test_copy_moves_a_gallery_to_postgresql_and_back(pg_cluster: Cluster, pg_url: str, tmp_path: Path) -> None:
    source, back = tmp_path / "desk.db", tmp_path / "back.db"
    alice = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(source, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [alice, fake_photo(tmp_path, "a2.png", (10, 1))], Consent("R1", [PURPOSE], jurisdiction="GB"))
        gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", [PURPOSE]))
        gallery.create_api_key("desk-1", roles=["operator"])
        gallery.match(alice, purpose=PURPOSE)
        head, gallery_id = gallery.verify_audit().head, gallery.key_info().gallery_id
    result = CliRunner().invoke(app, ["copy", str(source), pg_url, "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["subjects"], report["templates"], report["consents"], report["audit_head"]) == (2, 3, 2, head)
    with Gallery(pg_url, encoder=FakeEncoder()) as copied:  # the same gallery key opens it: no re-enrollment
        assert copied.match(alice, purpose=PURPOSE).faces[0].subject == "alice"
        assert [k.name for k in copied.api_keys()] == ["desk-1"]
        copied.forget("bob")  # erasures on the copy shred the copy's keys
        assert copied.verify_audit().intact
    again = CliRunner().invoke(app, ["copy", str(source), pg_url])
    assert again.exit_code == 1 and "holds a gallery already" in again.stderr
    refused = CliRunner().invoke(app, ["copy", pg_url, str(back)])  # the source's own key store is still here
    assert refused.exit_code == 1 and "holds keys already" in refused.stderr and not back.exists()
    deks = Path(os.environ["CONSENTMATCH_KEY_DIR"]) / f"{gallery_id}.deks"
    deks.rename(tmp_path / "retired.deks")  # the desk's gallery retired: back again
    result = CliRunner().invoke(app, ["copy", pg_url, str(back)])
    assert result.exit_code == 0, result.stderr
    assert "audit chain verified at both ends" in result.stdout
    with Gallery(back, encoder=FakeEncoder()) as returned:
        assert [s.subject for s in returned.subjects()] == ["alice"]
        assert returned.match(alice, purpose=PURPOSE).faces[0].subject == "alice"
        assert returned.verify_audit().intact


def test_copy_refuses_a_tampered_source_and_writes_nothing(pg_cluster: Cluster, pg_url: str, tmp_path: Path) -> None:
    import sqlite3

    source = tmp_path / "desk.db"
    with Gallery(source, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
    conn = sqlite3.connect(source)
    conn.execute("UPDATE subjects SET name = 'mallory'")
    conn.commit()
    conn.close()
    result = CliRunner().invoke(app, ["copy", str(source), pg_url])
    assert result.exit_code == 1 and "the subject 'mallory'" in result.stderr and "nothing was copied" in result.stderr
    database = pg_url.split("?")[0].rsplit("/", 1)[1]
    assert pg_cluster.psql(database, "SELECT to_regclass('subjects') IS NULL").strip() == "t"


def test_nodes_need_only_the_grants_the_readme_lists(pg_cluster: Cluster, pg_url: str, tmp_path: Path) -> None:
    """The owner creates the gallery; a node's role with the README's grants (no DDL) does everything else."""
    database = pg_url.split("?")[0].rsplit("/", 1)[1]
    alice = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [alice], Consent("R1", [PURPOSE]))
    role = f"node_{database}"
    pg_cluster.psql("postgres", f"CREATE ROLE {role} LOGIN")
    for name in (database, f"{database}_keys"):
        pg_cluster.psql(name, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; "
                              f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    node = pg_url.replace("user=postgres", f"user={role}")
    with Gallery(node, encoder=FakeEncoder()) as gallery:
        gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", [PURPOSE]))
        assert gallery.match(alice, purpose=PURPOSE).faces[0].subject == "alice"
        assert gallery.forget("alice").verified
        assert gallery.verify_audit().intact
