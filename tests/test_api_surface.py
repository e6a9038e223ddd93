"""What integrators import and what the CLI promises: pinned, so a change is a decision."""

from __future__ import annotations

import inspect
import subprocess
import sys

import consentmatch
from consentmatch import errors
from consentmatch.cli import app


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
    # match/verify --case-ref file requests; the rest serve the HTTP service (authenticate, a held probe, idempotency,
    # its 403s audited)
    assert public - set(VERBS.values()) == {"close", "verify_audit", "match_many", "request_match", "request_verify",
                                            "authenticate", "request_probe", "recall_answer", "keep_answer",
                                            "answer_once", "record_refusal"}


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


def test_the_version_is_the_installed_packages() -> None:
    """`__version__` is a constant (`_version.py`, no metadata read per process): it must follow pyproject.toml."""
    import re
    from importlib.metadata import version
    from pathlib import Path

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert declared and consentmatch.__version__ == declared[1] == version("consentmatch")
