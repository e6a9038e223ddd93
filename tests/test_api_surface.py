"""What integrators import and what the CLI promises: pinned, so a change is a decision."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import consentmatch
import consentmatch.gallery
from consentmatch import errors
from consentmatch.cli import app

from .conftest import PURPOSE, FakeEncoder


def test_public_names_are_pinned() -> None:
    assert sorted(consentmatch.__all__) == sorted([
        "AuditCheck", "AuditEvent", "Box", "Candidate", "Consent", "ConsentError", "ConsentMatchError", "ConsentRecord", "EncryptionKeyError", "EngineError",
        "Enrollment", "Erasure", "FaceError", "FaceMatch", "FaceTooSmallError", "Gallery", "GalleryNotFoundError",
        "ImageError", "ImportReport", "KeyInfo", "InvalidArgumentError", "ManifestError", "MatchResult", "MultipleFacesError",
        "NoActiveEnrollmentError", "NoFaceError", "QualityError", "OptOut", "PolicyError", "PurposeInfo", "RayRunner", "Rejection", "RetentionEntry", "StorageError", "SubjectInfo", "SubjectNotFoundError", "TamperingError", "Verification", "__version__",
        # the service (`consentmatch serve`)
        "AccessError", "ApiKeyInfo", "ApprovalRequiredError", "AuthenticationError", "NewApiKey", "PermissionDeniedError",
        "RateLimitError", "RequestNotFoundError", "SearchRequest", "UnknownReferenceError",
    ])
    for name in consentmatch.__all__:
        assert getattr(consentmatch, name) is not None


def test_every_error_is_in_the_tree_and_documented() -> None:
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.ConsentMatchError)
        assert error.__doc__ and name in errors.__doc__


VERBS = {
    "enroll": "enroll", "import": "import_manifest", "match": "match", "verify": "verify", "forget": "forget",
    "subjects": "subjects", "retention": "retention", "purge": "purge", "audit": "audit", "export": "export",
    "consent grant": "grant_consent", "consent show": "consent", "consent list": "consents",
    "consent revoke": "revoke_consent", "policy show": "policy", "policy set": "set_policy",
    "optout add": "add_optout", "optout remove": "remove_optout", "optout list": "optouts",
    "key info": "key_info", "key rotate": "rotate_key",
    "purpose add": "declare_purpose", "purpose remove": "remove_purpose", "purpose list": "purposes",
    "apikey create": "create_api_key", "apikey list": "api_keys", "apikey revoke": "revoke_api_key",
    "request list": "search_requests", "request show": "search_request", "request approve": "approve_request",
    "request deny": "deny_request",
}
NOT_GALLERY_VERBS = {"demo", "evaluate", "calibrate", "key generate", "serve", "copy"}  # the CLI's own tools, beside the mirror


def _commands() -> set[str]:
    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    for group in app.registered_groups:
        names |= {f"{group.name} {c.name}" for c in group.typer_instance.registered_commands}
    return names


def test_cli_mirrors_the_gallery_verbs() -> None:
    commands = _commands()
    assert set(VERBS) <= commands
    assert commands - set(VERBS) <= NOT_GALLERY_VERBS
    public = {name for name, _ in inspect.getmembers(consentmatch.Gallery, inspect.isfunction) if not name.startswith("_")}
    # audit --verify; match PHOTO... calls match_many (match is its one-photo form); close is the context manager's;
    # match/verify --case-ref file requests. The HTTP service's own calls are services/'s (`Gallery.context`).
    assert public - set(VERBS.values()) == {"close", "verify_audit", "match_many", "request_match", "request_verify"}


def test_the_facade_only_delegates() -> None:
    """gallery.py stays a facade: at most 350 lines, and each public method's body (past its
    docstring) is one statement, or one `with` around one statement: a call into a service."""
    source = Path(consentmatch.gallery.__file__).read_text()
    assert len(source.splitlines()) <= 350
    (cls,) = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Gallery"]
    methods = [n for n in ast.walk(cls) if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    assert len(methods) > 30
    for method in methods:
        body = method.body[1:] if ast.get_docstring(method) is not None else method.body
        if len(body) == 1 and isinstance(body[0], ast.With):
            body = body[0].body
        assert len(body) == 1 and any(isinstance(n, ast.Call) for n in ast.walk(body[0])) or (
            method.name in {"context", "created_key_file"}), f"Gallery.{method.name} does more than delegate"


def test_the_service_names_moved_off_the_facade_still_work_and_warn(tmp_path: Path) -> None:
    """authenticate, request_probe, answer_once, recall_answer, keep_answer and record_refusal left
    `Gallery` for services/ (issue 27); old callers still get them, old keyword names included,
    with a DeprecationWarning naming the new call."""
    from consentmatch.services.legacy import MOVED

    assert set(MOVED) == {"authenticate", "request_probe", "answer_once", "recall_answer", "keep_answer",
                          "record_refusal"}
    with consentmatch.Gallery(tmp_path / "g.db", encoder=FakeEncoder(), key_dir=tmp_path / "keys") as gallery:
        gallery.grant_consent("alice", consentmatch.Consent("R1", [PURPOSE]))
        key = gallery.create_api_key("desk-1", roles=["operator"]).key
        with pytest.warns(DeprecationWarning, match=r"Gallery.authenticate is deprecated: call services.access"):
            assert gallery.authenticate(key=key, before_check=None).name == "desk-1"  # type: ignore[attr-defined]
        with pytest.warns(DeprecationWarning, match="answer_once"):
            assert gallery.answer_once("desk-1", "k1", fingerprint="digest", run=lambda: (200, "{}")) == (200, "{}")  # type: ignore[attr-defined]
        with pytest.warns(DeprecationWarning, match="keep_answer"):
            gallery.keep_answer("desk-1", "k2", fingerprint="digest", status=201, body="{}")  # type: ignore[attr-defined]
        with pytest.warns(DeprecationWarning, match="recall_answer"):
            assert gallery.recall_answer("desk-1", "k2")[1:] == (201, "{}")  # type: ignore[attr-defined]
        with pytest.warns(DeprecationWarning, match="request_probe"), pytest.raises(consentmatch.RequestNotFoundError):
            gallery.request_probe("no-such-request")  # type: ignore[attr-defined]
        with pytest.warns(DeprecationWarning, match="record_refusal"):
            gallery.record_refusal("match", errors.PermissionDeniedError("no"), subject="alice",  # type: ignore[attr-defined]
                                   actor="desk-1")
        assert gallery.audit(action="match")[-1].details["outcome"] == "refused"
        with pytest.raises(AttributeError, match="no attribute 'authentikate'"):
            gallery.authentikate  # type: ignore[attr-defined]  # noqa: B018


def test_import_is_light_and_side_effect_free() -> None:
    code = "import sys, consentmatch; print(sorted(m for m in ('numpy', 'faiss', 'dlib', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_loads_no_model_library() -> None:
    code = (
        "import sys; from consentmatch.cli import app\n"
        "try: app(['--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('numpy', 'faiss', 'dlib', 'PIL', 'onnxruntime', 'onnx') if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "[]"


def test_cli_start_loads_rich_only_to_print_a_table() -> None:
    """rich costs ~40 ms a start: `--version` and --json output never load it; a table does."""
    code = (
        "import sys; from consentmatch.cli import app\n"
        "try: app(['--version'])\nexcept SystemExit: pass\n"
        "print('rich.console' in sys.modules, 'rich.table' in sys.modules, file=sys.stderr)\n"
        "from consentmatch.cli.common import out, table\n"
        "out.print(table('Subject'))\n"
        "print('rich.console' in sys.modules, 'rich.table' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.split() == ["False", "False", "True", "True"]


def test_the_version_is_the_installed_packages() -> None:
    """`__version__` is a constant (`_version.py`, no metadata read per process): it must follow pyproject.toml."""
    import re
    from importlib.metadata import version
    from pathlib import Path

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert declared and consentmatch.__version__ == declared[1] == version("consentmatch")
